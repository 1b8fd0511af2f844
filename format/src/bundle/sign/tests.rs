use super::super::testing::{alter_manifest, alter_signature, strip_signature};
use super::super::{read_manifest, BundleWriter, Error, WriterOptions};
use super::*;
use std::io::Cursor;

fn key(n: u8) -> SecretKey {
    SecretKey::from_seed(&[n; 32])
}

fn bundle(sign: Option<SecretKey>, files: Vec<PinnedFile>) -> Vec<u8> {
    let opts = WriterOptions {
        chunk_size: 64 << 10,
        level: 1,
        workers: 1,
        sign,
        files,
        ..WriterOptions::default()
    };
    let mut w = BundleWriter::new(opts, Cursor::new(Vec::new())).unwrap();
    w.push_data(&[7u8; 100_000]).unwrap();
    let mut out = Vec::new();
    w.finish(&mut out).unwrap();
    out
}

fn open(b: &[u8]) -> Opened {
    read_manifest(&mut Cursor::new(b)).unwrap()
}

fn trust(keys: &[&SecretKey]) -> Trust {
    Trust::new(keys.iter().map(|k| k.public()).collect())
}

#[test]
fn signed_by_a_trusted_key_is_accepted_with_its_fingerprint() {
    let k = key(1);
    let b = bundle(Some(k.clone()), vec![]);
    let signer = trust(&[&key(2), &k]).check(&open(&b)).unwrap();
    assert_eq!(signer, Signer::Key(k.public().fingerprint()));
    assert!(signer.to_string().starts_with("ed25519:"));
    // Without trusted keys a valid signature still names its signer.
    assert_eq!(Trust::default().check(&open(&b)).unwrap(), signer);
}

#[test]
fn each_refusal_has_its_own_variant() {
    let k = key(1);
    let t = trust(&[&k]);
    let signed = bundle(Some(k.clone()), vec![]);
    let unsigned = bundle(None, vec![]);
    let other = bundle(Some(key(3)), vec![]);
    assert!(matches!(
        t.check(&open(&unsigned)),
        Err(Error::Unsigned { .. })
    ));
    assert!(matches!(
        t.check(&open(&strip_signature(&signed))),
        Err(Error::Unsigned { .. })
    ));
    assert!(matches!(
        t.check(&open(&other)),
        Err(Error::UntrustedSigner { .. })
    ));
    assert!(matches!(
        t.check(&open(&alter_manifest(&signed))),
        Err(Error::ManifestAltered { .. })
    ));
    assert!(matches!(
        t.check(&open(&alter_signature(&signed))),
        Err(Error::BadSignature { .. })
    ));
    // A forged block that also claims the altered manifest's digest: the
    // signature itself fails.
    let altered = alter_manifest(&signed);
    let mut o = open(&altered);
    let mut block = SignatureBlock::parse(o.signature.as_ref().unwrap()).unwrap();
    block.manifest_sha256 = sha2::Sha256::digest(&o.manifest_bytes).into();
    o.signature = Some(block.to_bytes());
    assert!(matches!(t.check(&o), Err(Error::BadSignature { .. })));
    // A damaged signature is refused even with no key trusted.
    assert!(matches!(
        Trust::default().check(&open(&alter_signature(&signed))),
        Err(Error::BadSignature { .. })
    ));
    let mut o = open(&signed);
    o.signature = Some(vec![0; 20]);
    assert!(matches!(t.check(&o), Err(Error::MalformedSignature { .. })));
}

#[test]
fn unsigned_is_accepted_without_keys() {
    let b = bundle(None, vec![]);
    assert_eq!(Trust::default().check(&open(&b)).unwrap(), Signer::Unsigned);
}

#[test]
fn pinned_files_must_match_and_unpinned_ones_need_no_keys() {
    let mlo = b"MLO bytes".to_vec();
    let b = bundle(Some(key(1)), vec![PinnedFile::new("MLO", &mlo)]);
    let o = open(&b);
    let m = &o.manifest;
    let t = trust(&[&key(1)]);
    t.check_file(m, "MLO", &mlo).unwrap();
    t.check_file(m, "/mlo", &mlo).unwrap();
    assert!(matches!(
        t.check_file(m, "MLO", b"MLO bytez"),
        Err(Error::FileMismatch { .. })
    ));
    assert!(matches!(
        Trust::default().check_file(m, "MLO", b"other"),
        Err(Error::FileMismatch { .. })
    ));
    assert!(matches!(
        t.check_file(m, "u-boot.img", b"x"),
        Err(Error::UnpinnedFile { .. })
    ));
    Trust::default().check_file(m, "u-boot.img", b"x").unwrap();
}

#[test]
fn key_files_round_trip_and_bad_ones_are_refused() {
    let k = key(9);
    let p = k.public();
    assert_eq!(PublicKey::parse(&p.to_text("factory")).unwrap(), p);
    assert_eq!(
        SecretKey::parse(&k.to_text()).unwrap().public(),
        p,
        "the secret file gives back the same key"
    );
    for bad in [
        "",
        "ssh-ed25519 AAAA",
        "flasher-ed25519-public 1234",
        "flasher-ed25519-secret 00",
    ] {
        assert!(
            matches!(PublicKey::parse(bad), Err(Error::KeyFile { .. })),
            "{bad:?}"
        );
    }
    // A public file is not a secret file and vice versa.
    assert!(SecretKey::parse(&p.to_text("")).is_err());
    assert!(PublicKey::parse(&k.to_text()).is_err());
    assert!(!format!("{k:?}").contains(&hex::encode([9u8; 32])));
}
