//! Board files: the TOML in `boards/data/` (and `--board-file` on the host) and
//! the JSON the initramfs carries in `etc/flasher/board.json` for `/init`.

pub fn board(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(b) = boards::parse("fuzz", text) {
        round_trip(&b);
    }
    if let Ok(b) = boards::parse_json("board.json", text) {
        round_trip(&b);
    }
}

/// An accepted board is valid, and TOML and JSON both carry it unchanged.
fn round_trip(b: &boards::Board) {
    assert_eq!(boards::validate(b), Ok(()), "an accepted board validates");
    let json = boards::to_json(b).expect("a board renders as JSON");
    let from_json = boards::parse_json("board.json", &json).expect("rendered JSON parses");
    assert_eq!(&from_json, b, "JSON round trip");
    let toml = boards::to_toml(b).expect("a board renders as TOML");
    let from_toml = boards::parse("fuzz", &toml).expect("rendered TOML parses");
    assert_eq!(&from_toml, b, "TOML round trip");
}
