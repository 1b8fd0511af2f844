//! `mkflasher qemu-matrix` end to end (issue 25 item 2): a matrix of two
//! quick scenarios on `qemu-x86_64-sd`, each on a card the matrix builds from
//! the demo OS bundle (two cards, so the two run in parallel with `--jobs
//! 2`): the happy path, and a target too small, refused as expected. Both
//! meet their expectation, so the command exits 0; the aggregated JSON and
//! JUnit are read back.

mod qemu_common;

use mkflasher::qemu_matrix::Summary;
use qemu_common::*;
use std::process::Command;

#[test]
fn a_matrix_of_two_runs_in_parallel_with_one_report() {
    let f = fixture();
    let dir = f.path("matrix");
    std::fs::create_dir_all(&dir).unwrap();
    let matrix = dir.join("two.toml");
    std::fs::write(
        &matrix,
        format!(
            r#"
[defaults]
board = "qemu-x86_64-sd"
image = "{bundle}"
timeout = {timeout}

[[scenario]]
name = "sd happy path"
target_size = "64M"

[[scenario]]
name = "sd target too small"
# Another card (other build arguments), so it runs beside the first.
build_args = ["--cmdline", "flasher.verify=full"]
target_size = "16M"
expect = "refused"
class = 3
"#,
            bundle = f.bundle.display(),
            timeout = TIMEOUT.as_secs()
        ),
    )
    .unwrap();
    let (json, junit, work) = (dir.join("two.json"), dir.join("two.xml"), dir.join("work"));
    let _g = vm_lock();
    let started = std::time::Instant::now();
    let out = Command::new(mkflasher_bin())
        .arg("qemu-matrix")
        .arg(&matrix)
        .args(["--jobs", "2", "--json"])
        .arg(&json)
        .arg("--junit")
        .arg(&junit)
        .arg("--work-dir")
        .arg(&work)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "{table}{}\nmkflasher qemu-matrix: {:.0} s",
        String::from_utf8_lossy(&out.stderr),
        started.elapsed().as_secs_f64()
    );
    assert!(out.status.success(), "{}", out.status);
    assert!(
        table.contains("2 of 2 scenarios met their expectation (2 at a time"),
        "{table}"
    );

    let s: Summary = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!((s.jobs, s.passed, s.failed), (2, 2, 0));
    let [ok, small] = &s.scenarios[..] else {
        panic!("{s:?}")
    };
    assert_eq!(ok.name, "sd happy path");
    assert_eq!(ok.report.verdict, flasher_qemu::Verdict::Success);
    assert!(ok.report.powered_off);
    assert!(ok.report.unit_record.is_some());
    assert_target_equals_image(ok.report.target.as_deref().unwrap(), &f.os);
    assert_eq!(small.report.verdict, flasher_qemu::Verdict::Refused);
    assert_eq!(
        small.report.error_class.as_ref().map(|c| c.class),
        Some(ErrorClass::TargetRefused)
    );
    assert!(small.passed && small.mismatch.is_none());
    assert!(all_zero(small.report.target.as_deref().unwrap()));
    for sc in &s.scenarios {
        assert!(sc.report.console_log.as_deref().unwrap().is_file());
        assert!(sc.report.events.as_deref().unwrap().is_file());
        assert!(sc.work_dir.starts_with(&work));
    }
    // Two cards, built by the matrix, and run side by side: the whole took
    // less than the two VM runs and the builds one after the other would.
    assert_ne!(ok.report.card, small.report.card);
    eprintln!(
        "VM runs {:.0} s and {:.0} s, matrix {:.0} s",
        ok.report.elapsed_s, small.report.elapsed_s, s.elapsed_s
    );

    const CHECK: &str = r#"
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
assert root.tag == "testsuite", root.tag
assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("2", "0", "0"), root.attrib
cases = root.findall("testcase")
assert [c.get("name") for c in cases] == ["sd happy path", "sd target too small"], cases
for c in cases:
    assert c.get("classname") == "mkflasher.qemu.qemu-x86_64-sd", c.attrib
    float(c.get("time"))
    assert c.find("failure") is None and c.find("error") is None
assert "verdict: refused: class 3" in cases[1].find("system-out").text
print("ok")
"#;
    let py = Command::new("python3")
        .args(["-c", CHECK])
        .arg(&junit)
        .output()
        .expect("python3");
    assert!(
        py.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&py.stderr),
        std::fs::read_to_string(&junit).unwrap()
    );
}
