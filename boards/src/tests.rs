//! Tests for board parsing, validation and detection on fake roots.

use super::*;
use std::fs;

fn write(root: &Path, rel: &str, contents: &[u8]) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, contents).unwrap();
}

const MINIMAL: &str = r#"
name = "x"
description = "d"
status = "experimental"
arch = "armv7"
[target]
transports = ["mmc"]
"#;

#[test]
fn every_shipped_board_file_parses_and_validates() {
    let boards = builtin().unwrap();
    assert_eq!(boards.len(), BUILTIN_FILES.len());
    let expected = [
        "artik10",
        "artik5",
        "beaglebone-black",
        "beaglebone-green",
        "beaglebone-green-wireless",
        "hummingboard-i2",
        "intel-edison",
        "intel-nuc",
        "nitrogen6x",
        "odroid-c1",
        "odroid-xu4",
        "qemu-imx6-nitrogen6x",
        "qemu-x86_64-nuc",
        "qemu-x86_64-sd",
        "ts4900",
    ];
    let names: Vec<&str> = boards.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, expected);
    // Every file on disk is compiled in (no forgotten include_str!).
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    let mut on_disk: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    on_disk.sort();
    let mut compiled: Vec<String> = BUILTIN_FILES.iter().map(|(f, _)| f.to_string()).collect();
    compiled.sort();
    assert_eq!(on_disk, compiled);
}

#[test]
fn shipped_facts_the_rest_of_the_project_relies_on() {
    let bbb = find("beaglebone-black").unwrap();
    assert_eq!(bbb.target.controllers, ["481d8000.mmc"]);
    assert_eq!(bbb.target.mmc_type, Some(MmcType::Mmc));
    assert!(bbb.target.require_boot_partitions);
    // Mainline and vendor names are alternatives for the same LED.
    assert_eq!(
        bbb.leds.leds[0],
        led::LedSpec::Class {
            names: vec![
                "beaglebone:green:heartbeat".into(),
                "beaglebone:green:usr0".into()
            ]
        }
    );
    let sd = find("qemu-x86_64-sd").unwrap();
    assert_eq!(sd.target.controllers, ["0000:00:06.0"]);
    assert_eq!(sd.target.mmc_type, Some(MmcType::Sd));
    assert!(sd.identity.compatible.is_empty() && sd.identity.dmi.is_empty());
    assert_eq!(sd.modules, ["mmc_core", "sdhci", "sdhci-pci", "mmc_block"]);
    let nuc = find("qemu-x86_64-nuc").unwrap();
    assert_eq!(nuc.target.transports, [Transport::Nvme]);
    assert!(nuc.modules.iter().any(|m| m == "usb-storage"));
    assert!(nuc.leds.leds.is_empty());
}

#[test]
fn unknown_keys_are_rejected_everywhere() {
    let top = MINIMAL.replace("arch", "colour = 1\narch");
    assert!(matches!(parse("x.toml", &top), Err(Error::Parse { .. })));
    for extra in [
        "[identity]\nfoo = 1\n",
        "[boot_medium]\nfoo = 1\n",
        "[power_off]\nmethod = \"halt\"\nfoo = 1\n",
        "[leds]\nfoo = 1\n",
        "[[bootloader]]\nkind = \"raw\"\noffset = 1024\nfile = \"u\"\nfoo = 1\n",
    ] {
        let text = format!("{MINIMAL}{extra}");
        assert!(
            matches!(parse("x.toml", &text), Err(Error::Parse { .. })),
            "accepted: {extra}"
        );
    }
    let text = MINIMAL.replace(
        "transports = [\"mmc\"]",
        "transports = [\"mmc\"]\nbogus = true",
    );
    assert!(matches!(parse("x.toml", &text), Err(Error::Parse { .. })));
    // And the minimal file itself is fine.
    parse("x.toml", MINIMAL).unwrap();
}

#[test]
fn full_schema_round_trip() {
    let text = format!(
        "{MINIMAL}{}",
        r#"[identity]
compatible = ["a,b"]
dmi = [{ sys_vendor = "S", board_name = "B*" }]
[boot_medium]
controllers = ["48060000.mmc"]
[[bootloader]]
kind = "emmc-boot"
partition = "boot1"
offset = 512
file = "tiboot3.bin"
[[bootloader]]
kind = "raw"
offset = 131072
file = "MLO"
[leds]
leds = [{ kind = "gpio", chip = "gpiochip0", line = 3, active_low = true }]
phases = { success = "solid" }
[power_off]
method = "reboot"
hold_secs = 3
"#
    )
    .replace(
        "transports = [\"mmc\"]",
        "transports = [\"mmc\"]\nrequire_boot_partitions = true",
    )
    .replace(
        "arch",
        "watchdog = \"/dev/watchdog\"\nmodules = [\"sdhci-omap\"]\narch",
    );
    let b = parse("x.toml", &text).unwrap();
    assert_eq!(
        b.bootloader[0],
        Placement::EmmcBoot {
            partition: BootPartition::Boot1,
            offset: 512,
            file: "tiboot3.bin".into()
        }
    );
    assert_eq!(b.power_off.method, PowerOffMethod::Reboot);
    assert_eq!(b.watchdog.as_deref(), Some("/dev/watchdog"));
    // Not set: the default stall interval.
    assert_eq!(b.watchdog_stall(), std::time::Duration::from_secs(60));
    let set = parse(
        "x.toml",
        &text.replace("arch", "watchdog_stall_s = 30\narch"),
    )
    .unwrap();
    assert_eq!(set.watchdog_stall(), std::time::Duration::from_secs(30));
    assert_eq!(
        b.leds.phases.get(&flasher_format::Phase::Success).unwrap(),
        "solid"
    );
    let back = to_toml(&b).unwrap();
    assert_eq!(parse("x.toml", &back).unwrap(), b);
}

#[test]
fn every_shipped_board_round_trips_through_toml() {
    for b in builtin().unwrap() {
        let text = to_toml(&b).unwrap();
        assert_eq!(parse(&format!("{}.toml", b.name), &text).unwrap(), b);
    }
}

#[test]
fn validation_rejects_inconsistent_boards() {
    let cases = [
        MINIMAL.replace("transports = [\"mmc\"]", "transports = []"),
        MINIMAL.replace("transports = [\"mmc\"]", "transports = [\"mmc\", \"mmc\"]"),
        MINIMAL.replace(
            "transports = [\"mmc\"]",
            "transports = [\"nvme\"]\nmmc_type = \"MMC\"",
        ),
        MINIMAL.replace(
            "transports = [\"mmc\"]",
            "transports = [\"mmc\"]\ncontrollers = [\"a/b\"]",
        ),
        format!(
            "{MINIMAL}[[bootloader]]\nkind = \"emmc-boot\"\npartition = \"boot0\"\nfile = \"f\"\n"
        ),
        MINIMAL.replace("arch", "watchdog = \"watchdog\"\narch"),
        MINIMAL.replace("arch", "watchdog_stall_s = 0\narch"),
        MINIMAL.replace("arch", "watchdog_stall_s = 86400\narch"),
        MINIMAL.replace("arch", "modules = [\"sdhci.ko\"]\narch"),
        MINIMAL.replace("name = \"x\"", "name = \"X Y\""),
        MINIMAL.replace(
            "transports = [\"mmc\"]",
            "transports = [\"mmc\"]\ncontrollers = [\"a.mmc\"]",
        ) + "[boot_medium]\ncontrollers = [\"a.mmc\"]\n",
    ];
    for text in cases {
        assert!(
            matches!(parse("x", &text), Err(Error::Invalid { .. })),
            "accepted: {text}"
        );
    }
    // File name and board name must agree for shipped files.
    assert!(matches!(
        parse("y.toml", MINIMAL),
        Err(Error::Invalid { .. })
    ));
}

/// A `[card]` table on MINIMAL (an armv7 board).
fn with_card(card: &str) -> String {
    format!("{MINIMAL}[card]\n{card}")
}

#[test]
fn card_tables_are_checked() {
    let ok = with_card(
        "dtbs = [\"a.dtb\", \"b.dtb\"]\nfdt = \"a.dtb\"\nconsole = \"ttyO0,115200n8\"\n\
         [[card.uboot]]\ndebian = \"cfg/SPL\"\noffset = 1024\n\
         [[card.uboot]]\ndebian = \"cfg/MLO\"\nfat = \"MLO\"\n",
    );
    let b = parse("x", &ok).unwrap();
    assert_eq!(b.card.uboot[0].offset, Some(1024));
    assert_eq!(b.card.uboot[1].fat.as_deref(), Some("MLO"));
    let bad = [
        // FDT not among the device trees carried.
        with_card("dtbs = [\"a.dtb\"]\nfdt = \"b.dtb\"\n"),
        with_card("dtbs = [\"dir/a.dtb\"]\n"),
        with_card("dtbs = [\"a.img\"]\n"),
        // Raw over the MBR, at or past the first partition.
        with_card("[[card.uboot]]\ndebian = \"c/SPL\"\noffset = 0\n"),
        with_card("[[card.uboot]]\ndebian = \"c/SPL\"\noffset = 511\n"),
        with_card("[[card.uboot]]\ndebian = \"c/SPL\"\noffset = 1048576\n"),
        // Both or neither of fat and offset.
        with_card("[[card.uboot]]\ndebian = \"c/SPL\"\noffset = 1024\nfat = \"SPL\"\n"),
        with_card("[[card.uboot]]\ndebian = \"c/SPL\"\n"),
        with_card("[[card.uboot]]\ndebian = \"../SPL\"\nfat = \"SPL\"\n"),
        with_card("[[card.uboot]]\ndebian = \"c/MLO\"\nfat = \"a/MLO\"\n"),
        with_card("needs = \"bl1\"\n[[card.uboot]]\ndebian = \"c/MLO\"\nfat = \"MLO\"\n"),
        // x86 boards boot through UEFI.
        with_card("console = \"ttyS0\"\n").replace("armv7", "x86_64"),
    ];
    for text in bad {
        assert!(
            matches!(parse("x", &text), Err(Error::Invalid { .. })),
            "accepted: {text}"
        );
    }
    assert!(matches!(
        parse("x", &with_card("dtbs = []\nbogus = 1\n")),
        Err(Error::Parse { .. })
    ));
}

#[test]
fn find_unknown_board_lists_the_known_ones() {
    match find("beaglebone-blue") {
        Err(Error::UnknownBoard { name, known }) => {
            assert_eq!(name, "beaglebone-blue");
            assert!(known.contains(&"beaglebone-black".to_string()));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn load_file_overrides_builtin() {
    let dir = tempfile::tempdir().unwrap();
    let text = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data/beaglebone-black.toml"),
    )
    .unwrap()
    .replace("481d8000.mmc\"]", "481d8000.mmc\", \"extra.mmc\"]");
    let path = dir.path().join("my-bbb.toml");
    fs::write(&path, text).unwrap();
    let mine = load_file(&path).unwrap();
    let boards = with_override(builtin().unwrap(), mine);
    assert_eq!(boards.len(), BUILTIN_FILES.len());
    let bbb = find_in(&boards, "beaglebone-black").unwrap();
    assert_eq!(bbb.target.controllers, ["481d8000.mmc", "extra.mmc"]);
    assert!(matches!(
        load_file(&dir.path().join("missing.toml")),
        Err(Error::Io(_))
    ));
}

#[test]
fn glob() {
    assert!(glob_match("NUC*", "NUC7i5BNH"));
    assert!(!glob_match("NUC*", "xNUC"));
    assert!(glob_match("*edison*", "Intel edison board"));
    assert!(glob_match("a*c", "abc"));
    assert!(!glob_match("a*c", "abd"));
    assert!(!glob_match("ab*b", "ab"));
    assert!(glob_match("exact", "exact"));
    assert!(!glob_match("exact", "exactly"));
}

fn dt(root: &Path, list: &[&str]) {
    let mut bytes = Vec::new();
    for s in list {
        bytes.extend_from_slice(s.as_bytes());
        bytes.push(0);
    }
    write(root, "proc/device-tree/compatible", &bytes);
}

#[test]
fn detect_by_device_tree_prefers_the_most_specific_string() {
    let boards = builtin().unwrap();
    let r = tempfile::tempdir().unwrap();
    dt(
        r.path(),
        &[
            "ti,am335x-bone-green-wireless",
            "ti,am335x-bone-green",
            "ti,am335x-bone-black",
            "ti,am335x-bone",
            "ti,am33xx",
        ],
    );
    let d = detect(r.path(), None, &boards).unwrap();
    assert_eq!(d.board.name, "beaglebone-green-wireless");
    assert_eq!(
        d.how,
        How::Compatible("ti,am335x-bone-green-wireless".into())
    );

    let r = tempfile::tempdir().unwrap();
    dt(
        r.path(),
        &["ti,am335x-bone-black", "ti,am335x-bone", "ti,am33xx"],
    );
    assert_eq!(
        detect(r.path(), None, &boards).unwrap().board.name,
        "beaglebone-black"
    );

    // The sysfs location works too.
    let r = tempfile::tempdir().unwrap();
    write(
        r.path(),
        "sys/firmware/devicetree/base/compatible",
        b"solidrun,hummingboard/dl\0fsl,imx6dl\0",
    );
    assert_eq!(
        detect(r.path(), None, &boards).unwrap().board.name,
        "hummingboard-i2"
    );

    // A plain BeagleBone (white, no eMMC) is not a flasher target.
    let r = tempfile::tempdir().unwrap();
    dt(r.path(), &["ti,am335x-bone", "ti,am33xx"]);
    assert!(matches!(
        detect(r.path(), None, &boards),
        Err(Error::NotDetected { .. })
    ));
}

#[test]
fn cmdline_takes_precedence_and_unknown_names_fail() {
    let boards = builtin().unwrap();
    let r = tempfile::tempdir().unwrap();
    dt(r.path(), &["ti,am335x-bone-black"]);
    write(
        r.path(),
        "proc/cmdline",
        b"console=ttyS0 flasher.board=odroid-c1 quiet flasher.board=qemu-x86_64-sd\n",
    );
    assert_eq!(
        cmdline_board(r.path()).unwrap().as_deref(),
        Some("qemu-x86_64-sd")
    );
    let d = detect(r.path(), None, &boards).unwrap();
    assert_eq!(
        (d.board.name.as_str(), d.how),
        ("qemu-x86_64-sd", How::Cmdline)
    );
    // An explicit name beats the cmdline.
    let d = detect(r.path(), Some("ts4900"), &boards).unwrap();
    assert_eq!((d.board.name.as_str(), d.how), ("ts4900", How::Named));

    write(r.path(), "proc/cmdline", b"flasher.board=nope\n");
    assert!(matches!(
        detect(r.path(), None, &boards),
        Err(Error::UnknownBoard { .. })
    ));
}

#[test]
fn detect_by_dmi_and_qemu_needs_cmdline() {
    let boards = builtin().unwrap();
    let r = tempfile::tempdir().unwrap();
    write(
        r.path(),
        "sys/class/dmi/id/board_vendor",
        b"Intel Corporation\n",
    );
    write(r.path(), "sys/class/dmi/id/product_name", b"NUC7i5BNH\n");
    write(r.path(), "proc/cmdline", b"root=/dev/sda1\n");
    let d = detect(r.path(), None, &boards).unwrap();
    assert_eq!(d.board.name, "intel-nuc");
    assert!(matches!(d.how, How::Dmi(_)));

    // DMI matching ignores case: U-Boot's SMBIOS on an Edison says "intel"/"edison".
    let r = tempfile::tempdir().unwrap();
    write(r.path(), "sys/class/dmi/id/sys_vendor", b"intel\n");
    write(r.path(), "sys/class/dmi/id/product_name", b"edison\n");
    assert_eq!(
        detect(r.path(), None, &boards).unwrap().board.name,
        "intel-edison"
    );

    // QEMU's DMI matches no board: the QEMU boards are chosen by cmdline only.
    let r = tempfile::tempdir().unwrap();
    write(r.path(), "sys/class/dmi/id/sys_vendor", b"QEMU\n");
    write(
        r.path(),
        "sys/class/dmi/id/product_name",
        b"Standard PC (Q35 + ICH9, 2009)\n",
    );
    assert!(matches!(
        detect(r.path(), None, &boards),
        Err(Error::NotDetected { .. })
    ));
}

#[test]
fn two_boards_claiming_the_same_identity_is_ambiguous() {
    let mut a = parse("x.toml", MINIMAL).unwrap();
    a.identity.compatible = vec!["v,board".into()];
    let mut b = a.clone();
    b.name = "y".into();
    let r = tempfile::tempdir().unwrap();
    dt(r.path(), &["v,board"]);
    assert!(matches!(
        detect(r.path(), None, &[a.clone(), b.clone()]),
        Err(Error::Ambiguous { .. })
    ));
    a.identity.compatible.clear();
    b.identity.compatible.clear();
    a.identity.dmi = vec![DmiMatch {
        sys_vendor: Some("V".into()),
        ..Default::default()
    }];
    b.identity.dmi = a.identity.dmi.clone();
    let r = tempfile::tempdir().unwrap();
    write(r.path(), "sys/class/dmi/id/sys_vendor", b"V\n");
    assert!(matches!(
        detect(r.path(), None, &[a, b]),
        Err(Error::Ambiguous { .. })
    ));
}

#[test]
fn rules_describe_themselves() {
    assert_eq!(
        find("beaglebone-black").unwrap().target.describe(),
        "eMMC (card type MMC) with boot0/boot1 partitions on 481d8000.mmc, not removable, at least 1.0 GB"
    );
    assert_eq!(
        find("intel-nuc").unwrap().target.describe(),
        "a disk via nvme > sata > mmc (in that order of preference); an mmc disk must be eMMC (card type MMC), not removable, at least 4.0 GB"
    );
}

#[test]
fn built_in_json_is_the_toml_board_files() {
    // build.rs converts data/*.toml to the JSON /init parses: both must agree,
    // board by board, and a board must survive the JSON mkflasher writes.
    assert_eq!(BUILTIN_JSON.len(), BUILTIN_FILES.len());
    for ((jf, json), (tf, toml)) in BUILTIN_JSON.iter().zip(BUILTIN_FILES) {
        assert_eq!(jf, tf);
        let from_toml = parse(tf, toml).unwrap();
        assert_eq!(parse_json(jf, json).unwrap(), from_toml, "{jf}");
        let again = to_json(&from_toml).unwrap();
        assert_eq!(parse_json("board.json", &again).unwrap(), from_toml, "{jf}");
    }
}

#[test]
fn board_files_load_as_toml_or_json() {
    let dir = tempfile::tempdir().unwrap();
    let b = find("beaglebone-black").unwrap();
    let json = dir.path().join("board.json");
    std::fs::write(&json, to_json(&b).unwrap()).unwrap();
    assert_eq!(load_file(&json).unwrap(), b);
    let toml = dir.path().join("my-bbb.toml");
    std::fs::write(&toml, to_toml(&b).unwrap()).unwrap();
    assert_eq!(load_file(&toml).unwrap(), b);
    std::fs::write(&json, "{ not json").unwrap();
    assert!(matches!(load_file(&json), Err(Error::ParseJson { .. })));
}

#[test]
fn bootloader_entries_take_only_their_kind_s_fields_and_round_trip() {
    for bad in [
        r#"{ kind = "raw", file = "MLO" }"#,
        r#"{ kind = "raw", offset = 1, file = "MLO", partition = "boot0" }"#,
        r#"{ kind = "emmc-boot", file = "MLO" }"#,
        r#"{ kind = "emmc-boot", partition = "boot0" }"#,
        r#"{ kind = "spi", offset = 1, file = "MLO" }"#,
        r#"{ kind = "raw", offset = 1, file = "MLO", size = 3 }"#,
    ] {
        let text = format!("{MINIMAL}bootloader = [{bad}]\n")
            .replace("[target]\ntransports = [\"mmc\"]\n", "")
            + "[target]\ntransports = [\"mmc\"]\n";
        assert!(
            matches!(parse("x.toml", &text), Err(Error::Parse { .. })),
            "{bad}"
        );
    }
    // The same construction with a good entry parses (so the refusals above
    // are about the entries).
    let good =
        format!("{MINIMAL}bootloader = [{{ kind = \"raw\", offset = 1, file = \"MLO\" }}]\n")
            .replace("[target]\ntransports = [\"mmc\"]\n", "")
            + "[target]\ntransports = [\"mmc\"]\n";
    assert_eq!(
        parse("x.toml", &good).unwrap().bootloader,
        [Placement::Raw {
            offset: 1,
            file: "MLO".into()
        }]
    );
    for p in [
        Placement::Raw {
            offset: 131072,
            file: "MLO".into(),
        },
        Placement::EmmcBoot {
            partition: BootPartition::Boot0,
            offset: 0,
            file: "u-boot.img".into(),
        },
    ] {
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<Placement>(&json).unwrap(), p);
    }
}

/// The Nitrogen6x's device tree as the board (and its QEMU twin) shows it.
fn nitrogen6x_dt(root: &Path) {
    dt(root, &["boundary,imx6q-nitrogen6x", "fsl,imx6q"]);
}

#[test]
fn a_card_picks_its_own_board_among_boards_sharing_a_device_tree() {
    let boards = builtin().unwrap();
    let r = tempfile::tempdir().unwrap();
    nitrogen6x_dt(r.path());
    // Without a card (`flasher detect` on the board), the real board and its
    // QEMU twin tie, and the twin is never meant: the real board.
    let d = detect(r.path(), None, &boards).unwrap();
    assert_eq!(d.board.name, "nitrogen6x");
    assert_eq!(d.how, How::Compatible("boundary,imx6q-nitrogen6x".into()));
    // A card built for either is found by the device tree, not a name.
    for name in ["qemu-imx6-nitrogen6x", "nitrogen6x"] {
        let d = detect_for(r.path(), None, Some(name), &boards).unwrap();
        assert_eq!(d.board.name, name);
        assert_eq!(d.how, How::Compatible("boundary,imx6q-nitrogen6x".into()));
    }
}

#[test]
fn a_card_on_another_board_is_refused() {
    let boards = builtin().unwrap();
    let r = tempfile::tempdir().unwrap();
    dt(
        r.path(),
        &["ti,am335x-bone-black", "ti,am335x-bone", "ti,am33xx"],
    );
    let e = detect_for(r.path(), None, Some("qemu-imx6-nitrogen6x"), &boards).unwrap_err();
    match &e {
        Error::WrongBoard {
            built_for, found, ..
        } => {
            assert_eq!(built_for, "qemu-imx6-nitrogen6x");
            assert_eq!(found, &["beaglebone-black"]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(e.class(), flasher_format::ErrorClass::BoardConfig);

    // A device tree no board file knows is no licence to write either.
    let r = tempfile::tempdir().unwrap();
    dt(r.path(), &["acme,unknown-board", "fsl,imx6q"]);
    match detect_for(r.path(), None, Some("nitrogen6x"), &boards) {
        Err(Error::NotDetected { compatible, .. }) => {
            assert_eq!(compatible, ["acme,unknown-board", "fsl,imx6q"])
        }
        other => panic!("{other:?}"),
    }

    // The most specific string decides: a BeagleBone Black card on a Green
    // (whose list also says bone-black) is refused.
    let r = tempfile::tempdir().unwrap();
    dt(
        r.path(),
        &["ti,am335x-bone-green", "ti,am335x-bone-black", "ti,am33xx"],
    );
    assert!(matches!(
        detect_for(r.path(), None, Some("beaglebone-black"), &boards),
        Err(Error::WrongBoard { .. })
    ));
}

#[test]
fn boards_without_identity_and_operator_names_are_not_second_guessed() {
    let boards = builtin().unwrap();
    // QEMU's x86 DMI matches nothing; the card's board has no identity.
    let r = tempfile::tempdir().unwrap();
    write(r.path(), "sys/class/dmi/id/sys_vendor", b"QEMU\n");
    let d = detect_for(r.path(), None, Some("qemu-x86_64-sd"), &boards).unwrap();
    assert_eq!(
        (d.board.name.as_str(), d.how),
        ("qemu-x86_64-sd", How::BuiltFor)
    );
    // flasher.board= on the command line is the operator's choice.
    let r = tempfile::tempdir().unwrap();
    nitrogen6x_dt(r.path());
    write(r.path(), "proc/cmdline", b"flasher.board=ts4900\n");
    let d = detect_for(r.path(), None, Some("qemu-imx6-nitrogen6x"), &boards).unwrap();
    assert_eq!((d.board.name.as_str(), d.how), ("ts4900", How::Cmdline));
}

/// Issue 14: the `[emmc]` table (health-gate limit, boot partition enable).
mod emmc {
    use super::*;

    /// An eMMC board that writes its bootloader into boot0.
    fn emmc_board() -> String {
        MINIMAL.replace(
            "transports = [\"mmc\"]",
            "transports = [\"mmc\"]\nmmc_type = \"MMC\"\nrequire_boot_partitions = true",
        ) + "[[bootloader]]\nkind = \"emmc-boot\"\npartition = \"boot0\"\nfile = \"tiboot3.bin\"\n"
    }

    #[test]
    fn defaults_and_settings() {
        let emmc = emmc_board();
        let b = parse("x.toml", &emmc).unwrap();
        assert_eq!(b.emmc, None);
        assert_eq!(b.life_time_limit_percent(), DEFAULT_LIFE_TIME_LIMIT_PERCENT);
        assert_eq!(DEFAULT_LIFE_TIME_LIMIT_PERCENT, 90);
        let text = format!(
            "{emmc}[emmc]\nlife_time_limit_percent = 70\nboot_enable = \"boot0\"\nboot_ack = true\n"
        );
        let b = parse("x.toml", &text).unwrap();
        assert_eq!(b.life_time_limit_percent(), 70);
        let e = b.emmc.unwrap();
        assert_eq!(e.boot_enable, Some(BootEnable::Boot0));
        assert_eq!(e.boot_ack, Some(true));
        assert_eq!(
            [BootEnable::Boot0, BootEnable::Boot1, BootEnable::User].map(BootEnable::field),
            [1, 2, 7]
        );
        // Through TOML and JSON (what the initramfs carries) unchanged.
        assert_eq!(parse("x.toml", &to_toml(&b).unwrap()).unwrap(), b);
        assert_eq!(parse_json("x", &to_json(&b).unwrap()).unwrap(), b);
        // The user area needs no placement.
        let user = format!("{emmc}[emmc]\nboot_enable = \"user\"\n");
        assert!(parse("x.toml", &user).is_ok());
    }

    #[test]
    fn no_shipped_board_changes_behaviour() {
        // No shipped board enables a boot partition or moves the limit: the
        // research (BOARDS.md) names no shipped board that boots from an eMMC
        // boot partition the flasher writes.
        for b in builtin().unwrap() {
            assert_eq!(b.emmc, None, "{}", b.name);
        }
    }

    #[test]
    fn validation() {
        let emmc = emmc_board();
        let cases = [
            format!("{emmc}[emmc]\nlife_time_limit_percent = 95\n"),
            format!("{emmc}[emmc]\nlife_time_limit_percent = 0\n"),
            format!("{emmc}[emmc]\nlife_time_limit_percent = 110\n"),
            // Booting from a partition nothing is written to.
            format!("{emmc}[emmc]\nboot_enable = \"boot1\"\n"),
            // An ack with nothing to enable.
            format!("{emmc}[emmc]\nboot_ack = false\n"),
            // Not an eMMC with boot partitions.
            MINIMAL.to_string() + "[emmc]\nboot_enable = \"user\"\n",
        ];
        for text in cases {
            assert!(
                matches!(parse("x.toml", &text), Err(Error::Invalid { .. })),
                "accepted: {text}"
            );
        }
        // A typo is an error, like everywhere else in a board file.
        let typo = format!("{emmc}[emmc]\nboot_enabled = \"boot0\"\n");
        assert!(matches!(parse("x.toml", &typo), Err(Error::Parse { .. })));
        for ok in [10, 50, 100] {
            let text = format!("{emmc}[emmc]\nlife_time_limit_percent = {ok}\n");
            assert_eq!(
                parse("x.toml", &text).unwrap().life_time_limit_percent(),
                ok
            );
        }
    }
}
