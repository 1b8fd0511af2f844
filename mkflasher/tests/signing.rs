//! Signed bundles from the host's side (docs/SECURITY.md): `mkflasher keygen`,
//! `bundle --sign --pin`, `inspect`, `build --trust`, and `flasher write
//! --trust` refusing each untrusted variant with the target file untouched.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use flasher::Error as FlasherError;
use flasher_format::bundle::testing::{alter_manifest, alter_signature, strip_signature};
use flasher_format::bundle::{self, Error as BundleError};
use mkflasher::cmd::{build, bundle as bundle_cmd, configure, inspect, keygen};

fn keygen(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let prefix = dir.join(name);
    keygen::run(keygen::Args {
        name: prefix.clone(),
    })
    .unwrap();
    keygen::key_paths(&prefix)
}

/// A 3 MiB image with data, a zero run and more data.
fn image(dir: &Path) -> PathBuf {
    let mut img: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 253) as u8).collect();
    img.resize(2 << 20, 0);
    img.extend((0..(1u32 << 20)).map(|i| (i % 7) as u8 + 1));
    let p = dir.join("os.img");
    std::fs::write(&p, img).unwrap();
    p
}

fn make_bundle(dir: &Path, out: &str, sign: Option<&Path>, pin: Vec<PathBuf>) -> PathBuf {
    let output = dir.join(out);
    bundle_cmd::run(bundle_cmd::Args {
        image: image(dir),
        output: output.clone(),
        bmap: None,
        skip_bmap_checksums: false,
        chunk_kib: 256,
        level: 1,
        workers: Some(1),
        min_zero_kib: 64,
        sign: sign.map(Path::to_path_buf),
        pin,
        unit_data: None,
        unit_files: None,
        manifest_version: bundle::VERSION,
        readback_digest: bundle::READBACK_XXH3.into(),
    })
    .unwrap();
    output
}

fn flasher_write(payload: &Path, target: &Path, trust: &[PathBuf]) -> flasher::Result<()> {
    mkflasher::flasher_cli::write::run(mkflasher::flasher_cli::write::Args {
        payload: payload.to_path_buf(),
        target: target.to_path_buf(),
        verify: mkflasher::flasher_cli::write::VerifyArg::Full,
        expand_data: false,
        no_direct: true,
        workers: Some(1),
        image_digest: false,
        skip_equal: false,
        root: "/".into(),
        trust: trust.to_vec(),
        json: false,
    })
}

#[test]
fn keygen_writes_a_private_key_and_never_overwrites() {
    let t = tempfile::tempdir().unwrap();
    let (secret, public) = keygen(t.path(), "factory");
    let mode = std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the secret key is readable by its owner only");
    let s = bundle::read_secret_key(&secret).unwrap();
    let p = bundle::read_public_key(&public).unwrap();
    assert_eq!(s.public(), p);
    let before = std::fs::read(&secret).unwrap();
    let again = keygen::run(keygen::Args {
        name: t.path().join("factory"),
    });
    assert!(matches!(again, Err(mkflasher::Error::Usage(_))));
    assert_eq!(std::fs::read(&secret).unwrap(), before, "key not replaced");
    // Two keys are different keys.
    let (_, other) = keygen(t.path(), "lab");
    assert_ne!(bundle::read_public_key(&other).unwrap(), p);
}

#[test]
fn signed_bundle_is_inspected_written_and_each_forgery_refused_untouched() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let (secret, public) = keygen(dir, "factory");
    let (_, lab_pub) = keygen(dir, "lab");
    let (lab_secret, _) = keygen::key_paths(&dir.join("lab"));
    let mlo = dir.join("MLO");
    std::fs::write(&mlo, b"first-stage loader").unwrap();
    let signed = make_bundle(dir, "signed.bundle", Some(&secret), vec![mlo]);
    let fp = bundle::read_public_key(&public).unwrap().fingerprint();

    let text = inspect::describe(&signed).unwrap();
    assert!(text.contains(&format!("signed by {fp}")), "{text}");
    assert!(text.contains("pinned file    MLO"), "{text}");

    let target = dir.join("target.img");
    std::fs::write(&target, vec![0u8; 8 << 20]).unwrap();
    flasher_write(&signed, &target, std::slice::from_ref(&public)).unwrap();
    let written = std::fs::read(&target).unwrap();
    let img = std::fs::read(image(dir)).unwrap();
    let first_diff = written.iter().zip(&img).position(|(a, b)| a != b);
    assert_eq!(first_diff, None, "the image landed on the target");

    // Several trusted keys: any one of them will do.
    flasher_write(&signed, &target, &[lab_pub.clone(), public.clone()]).unwrap();

    let bytes = std::fs::read(&signed).unwrap();
    let other = make_bundle(dir, "other.bundle", Some(&lab_secret), vec![]);
    type Case = (&'static str, Vec<u8>, fn(&BundleError) -> bool);
    let cases: Vec<Case> = vec![
        ("unsigned", strip_signature(&bytes), |e| {
            matches!(e, BundleError::Unsigned { .. })
        }),
        ("other key", std::fs::read(&other).unwrap(), |e| {
            matches!(e, BundleError::UntrustedSigner { .. })
        }),
        ("altered manifest", alter_manifest(&bytes), |e| {
            matches!(e, BundleError::ManifestAltered { .. })
        }),
        ("altered signature", alter_signature(&bytes), |e| {
            matches!(e, BundleError::BadSignature { .. })
        }),
    ];
    let before: Vec<u8> = (0..(8u32 << 20)).map(|i| (i % 241) as u8).collect();
    for (name, payload, want) in cases {
        let p = dir.join(format!("{}.bundle", name.replace(' ', "-")));
        std::fs::write(&p, payload).unwrap();
        std::fs::write(&target, &before).unwrap();
        match flasher_write(&p, &target, std::slice::from_ref(&public)) {
            Err(FlasherError::Bundle(e)) => assert!(want(&e), "{name}: {e}"),
            other => panic!("{name}: expected a refusal, got {other:?}"),
        }
        assert!(
            std::fs::read(&target).unwrap() == before,
            "{name}: the target changed"
        );
        // inspect still describes it, and says what is wrong with a forgery.
        let text = inspect::describe(&p).unwrap();
        if name.starts_with("altered") {
            assert!(text.contains("INVALID"), "{name}: {text}");
        }
    }
}

#[test]
fn build_with_trust_refuses_an_unsigned_payload_and_carries_the_keys() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let (secret, public) = keygen(dir, "factory");
    let init = dir.join("init");
    // BeagleBone Black is ARMv7: its initramfs takes an ARM /init.
    std::fs::write(
        &init,
        mkflasher::cmd::initramfs::fake_static_init_for(boards::Arch::Armv7),
    )
    .unwrap();
    let uboot = dir.join("uboot");
    std::fs::create_dir_all(&uboot).unwrap();
    let args = |payload: PathBuf, out: &str| build::Args {
        board: "beaglebone-black".into(),
        payload,
        bmap: None,
        output: dir.join(out),
        kernel: Some(init.clone()),
        initramfs: None,
        kernel_modules: None,
        init: Some(init.clone()),
        board_file: None,
        bootloader_files: Some(uboot.clone()),
        systemd_boot: None,
        cmdline: String::new(),
        log_size: Some(1 << 20),
        unit_data: None,
        unit_files: None,
        image_size: 0,
        power_of_two: false,
        trust: vec![public.clone()],
        sign: None,
    };
    let unsigned = make_bundle(dir, "unsigned.bundle", None, vec![]);
    let r = build::run(args(unsigned, "u.img"));
    assert!(
        matches!(
            r,
            Err(mkflasher::Error::Flasher(FlasherError::Bundle(
                BundleError::Unsigned { .. }
            )))
        ),
        "{r:?}"
    );
    assert!(!dir.join("u.img").exists(), "no card made");
    let signed = make_bundle(dir, "signed.bundle", Some(&secret), vec![]);
    build::run(args(signed, "s.img")).unwrap();
    let card = dir.join("s.img");
    let text = inspect::describe(&card).unwrap();
    assert!(text.contains("signed by ed25519:"), "{text}");
    // Config written after signing is not pinned: configure warns per file.
    assert!(configure::unpinned_on_signed_card(&card)
        .unwrap()
        .is_empty());
    configure::run(configure::Args {
        card: card.clone(),
        hostname: Some("unit-9".into()),
        wifi_ssid: None,
        wifi_psk: None,
        persistent_logging: None,
    })
    .unwrap();
    let warnings = configure::unpinned_on_signed_card(&card).unwrap();
    assert_eq!(warnings.len(), 2, "config.json and hostname: {warnings:?}");
    assert!(
        warnings[0].contains("config.json is not pinned"),
        "{warnings:?}"
    );

    // A per-unit data pool on a trusted card must be pinned (docs/factory.md):
    // refused on the host when it is not, accepted when `bundle --unit-data`
    // pinned the same pool.
    let csv = dir.join("units.csv");
    std::fs::write(
        &csv,
        "hostname,note
u-1,\"a, b\"\nu-2,ü\n",
    )
    .unwrap();
    let with_pool = |payload: PathBuf, out: &str| build::Args {
        unit_data: Some(csv.clone()),
        ..args(payload, out)
    };
    let r = build::run(with_pool(
        make_bundle(dir, "nopool.bundle", Some(&secret), vec![]),
        "np.img",
    ));
    assert!(
        matches!(
            &r,
            Err(mkflasher::Error::Flasher(FlasherError::Bundle(
                BundleError::UnpinnedFile { name }
            ))) if name == "units.json"
        ),
        "{r:?}"
    );
    assert!(!dir.join("np.img").exists(), "no card made");
    let pinned = dir.join("pool.bundle");
    bundle_cmd::run(bundle_cmd::Args {
        image: image(dir),
        output: pinned.clone(),
        bmap: None,
        skip_bmap_checksums: false,
        chunk_kib: 256,
        level: 1,
        workers: Some(1),
        min_zero_kib: 64,
        sign: Some(secret.clone()),
        pin: vec![],
        unit_data: Some(csv.clone()),
        unit_files: None,
        manifest_version: bundle::VERSION,
        readback_digest: bundle::READBACK_XXH3.into(),
    })
    .unwrap();
    build::run(with_pool(pinned, "p.img")).unwrap();
    let text = inspect::describe(&dir.join("p.img")).unwrap();
    assert!(text.contains("units.json"), "{text}");
}

/// `--pin DIR` pins every file under it by its path inside, as the card
/// builder names the files it copies from `--bootloader-files DIR`.
#[test]
fn a_pinned_directory_pins_its_files_by_card_path() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("uboot");
    std::fs::create_dir_all(dir.join("dtbs")).unwrap();
    std::fs::write(dir.join("MLO"), b"mlo").unwrap();
    std::fs::write(dir.join("dtbs/am335x-boneblack.dtb"), b"dtb").unwrap();
    let pins = bundle_cmd::pins(&[dir]).unwrap();
    let names: Vec<&str> = pins.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["MLO", "dtbs/am335x-boneblack.dtb"]);
    assert_eq!(
        pins[1],
        bundle::PinnedFile::new("dtbs/am335x-boneblack.dtb", b"dtb")
    );
}
