//! `mkflasher qemu-matrix FILE`: scenarios from a TOML file (boards, cards or
//! images to build cards from, targets, faults, kernel arguments, time-outs,
//! and what each is expected to end in), run in parallel, with one report
//! (docs/qemu.md, "Scenario matrices").
//!
//! [`load`] reads and checks the file: every error names the file and the
//! scenario's line and name. [`run`] runs the scenarios: each in its own
//! work directory with its own target; scenarios that share a card (or a
//! target file) form one group and run one after the other in the file's
//! order, since the harness locks a card for the whole of a run
//! (`flasher_qemu::CardWrites`, `CardBusy`) and a card's unit log is shared
//! state; groups run in parallel, up to `jobs` at once (each QEMU TCG run
//! keeps about one core busy). Each scenario's run is the one `mkflasher
//! qemu` makes ([`crate::qemu_report::run_reported`]); the [`Summary`]
//! holds every scenario's [`Report`] and whether it met its [`Expectation`],
//! and renders as JSON, one JUnit test suite and a table.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::Parser;
use flasher_format::io::IoContext;
use flasher_format::ErrorClass;
use flasher_qemu::{CardWrites, Fault, QemuOptions, Verdict, VirtualBoard};
use serde::{Deserialize, Serialize};

use crate::qemu_report::{self, junit_suite, Problem, Report, TestCase};

/// The summary's format version (as [`qemu_report::REPORT_VERSION`]).
pub const SUMMARY_VERSION: u32 = 1;

/// A scenario's time-out when neither it nor the defaults give one (as
/// `mkflasher qemu --timeout`).
pub const DEFAULT_TIMEOUT_S: u64 = 300;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{path}:{line}: scenario {name:?}: {message}")]
    Scenario {
        path: PathBuf,
        line: usize,
        name: String,
        message: String,
    },
    #[error("{failed} of {total} scenarios did not meet their expectation: {names}")]
    Unmet {
        failed: usize,
        total: usize,
        names: String,
    },
}

/// The fields a scenario and the `[defaults]` table share, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Fields {
    name: Option<String>,
    board: Option<String>,
    card: Option<PathBuf>,
    image: Option<PathBuf>,
    build_args: Option<Vec<String>>,
    target: Option<PathBuf>,
    target_size: Option<String>,
    no_target: Option<bool>,
    faults: Option<Vec<String>>,
    append: Option<Vec<String>>,
    timeout: Option<u64>,
    discard_card_writes: Option<bool>,
    expect: Option<Verdict>,
    class: Option<Classes>,
    message: Option<String>,
}

impl Fields {
    /// `self` where it says something, else `defaults`. Three sets of fields
    /// go together, so that a scenario giving one of a set takes none of it
    /// from the defaults: the card (`card`, `image`), the target (`target`, `target_size`, `no_target`) and the expectation
    /// (`expect`, `class`, `message`).
    fn or(self, d: &Fields) -> Fields {
        let own_card = self.card.is_some() || self.image.is_some();
        let own_target =
            self.target.is_some() || self.target_size.is_some() || self.no_target.is_some();
        let own_expect = self.expect.is_some() || self.class.is_some() || self.message.is_some();
        let d = d.clone();
        let pick = |own: bool, mine: Fields| -> Fields {
            if own {
                mine
            } else {
                d.clone()
            }
        };
        let card = pick(own_card, self.clone());
        let given_card = card.card.is_some();
        let target = pick(own_target, self.clone());
        let expect = pick(own_expect, self.clone());
        Fields {
            name: self.name,
            board: self.board.or(d.board),
            card: card.card,
            image: card.image,
            // Defaults' build_args serve the scenarios that build a card.
            build_args: if given_card {
                self.build_args
            } else {
                self.build_args.or(d.build_args)
            },
            target: target.target,
            target_size: target.target_size,
            no_target: target.no_target,
            faults: self.faults.or(d.faults),
            append: self.append.or(d.append),
            timeout: self.timeout.or(d.timeout),
            discard_card_writes: self.discard_card_writes.or(d.discard_card_writes),
            expect: expect.expect,
            class: expect.class,
            message: expect.message,
        }
    }
}

/// `class = 3` or `class = [4, 5]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Classes {
    One(ErrorClass),
    Any(Vec<ErrorClass>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MatrixFile {
    jobs: Option<usize>,
    #[serde(default)]
    defaults: Fields,
    #[serde(default, rename = "scenario")]
    scenarios: Vec<toml::Spanned<Fields>>,
}

/// What a scenario is expected to end in; a scenario passes when its run
/// meets it, so a failure that was expected passes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expectation {
    /// `failure` also accepts `refused` (a failure before the first write).
    pub verdict: Verdict,
    /// The blink class must be one of these (empty: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub class: Vec<ErrorClass>,
    /// The report's message must contain this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Expectation {
    /// Ok when `report` meets the expectation, else what differs.
    pub fn check(&self, report: &Report) -> Result<(), String> {
        let verdict_ok = report.verdict == self.verdict
            || (self.verdict == Verdict::Failure && report.verdict == Verdict::Refused);
        if !verdict_ok {
            return Err(format!("expected {self}, got {}", report.kind()));
        }
        if !self.class.is_empty() {
            match &report.error_class {
                Some(c) if self.class.contains(&c.class) => {}
                Some(c) => {
                    return Err(format!(
                        "expected {self}, got {}: {}",
                        report.verdict, c.class
                    ))
                }
                None => {
                    return Err(format!(
                        "expected {self}, got {} without a blink class",
                        report.verdict
                    ))
                }
            }
        }
        if let Some(want) = &self.message {
            let said = report.message.as_deref().unwrap_or("");
            if !said.contains(want.as_str()) {
                return Err(format!(
                    "expected a message containing {want:?}, got {said:?}"
                ));
            }
        }
        Ok(())
    }
}

impl std::fmt::Display for Expectation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.verdict)?;
        let classes: Vec<String> = self.class.iter().map(|c| c.blinks().to_string()).collect();
        match classes.len() {
            0 => Ok(()),
            1 => write!(f, " (class {})", classes[0]),
            _ => write!(f, " (class {})", classes.join(" or ")),
        }
    }
}

/// Where a scenario's card comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum CardSource {
    /// A card file (from `mkflasher build`).
    Given(PathBuf),
    /// Built by `mkflasher build --board BOARD --payload IMAGE ARGS...` into
    /// the work directory, once per run of the matrix for all the scenarios
    /// that name the same board, image and arguments.
    Build { image: PathBuf, args: Vec<String> },
}

/// A scenario's target.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetSpec {
    /// A target file; created at `size` when it does not exist.
    File { path: PathBuf, size: Option<u64> },
    /// A fresh blank file of this size in the scenario's work directory.
    Fresh(u64),
    /// No internal disk at all.
    None,
}

/// One scenario, checked, its paths resolved against the file's folder.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    /// Where its `[[scenario]]` table begins in the file.
    pub line: usize,
    pub board: VirtualBoard,
    pub card: CardSource,
    pub target: TargetSpec,
    pub faults: Vec<Fault>,
    pub append: Vec<String>,
    pub timeout: Duration,
    pub card_writes: CardWrites,
    pub expect: Expectation,
}

/// A matrix file, checked.
#[derive(Debug, Clone)]
pub struct Matrix {
    pub path: PathBuf,
    /// The file's `jobs`.
    pub jobs: Option<usize>,
    pub scenarios: Vec<Scenario>,
}

/// Read and check the matrix file at `path`.
pub fn load(path: &Path) -> Result<Matrix, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::File {
        path: path.into(),
        message: format!("cannot read the matrix file: {e}"),
    })?;
    parse(&text, path)
}

/// Check the matrix `text` read from `path` (relative paths in it are
/// resolved against `path`'s folder).
pub fn parse(text: &str, path: &Path) -> Result<Matrix, Error> {
    let file_err = |message: String| Error::File {
        path: path.into(),
        message,
    };
    let file: MatrixFile = toml::from_str(text).map_err(|e| file_err(e.to_string()))?;
    if file.jobs == Some(0) {
        return Err(file_err(
            "jobs = 0: at least one scenario must run at a time".into(),
        ));
    }
    if file.defaults.name.is_some() {
        return Err(file_err(
            "[defaults] cannot give a name: each scenario names itself".into(),
        ));
    }
    if file.scenarios.is_empty() {
        return Err(file_err("no [[scenario]] tables: nothing to run".into()));
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let mut scenarios: Vec<Scenario> = Vec::new();
    let mut dirs: HashMap<String, String> = HashMap::new();
    for (i, spanned) in file.scenarios.into_iter().enumerate() {
        let line = line_of(text, spanned.span().start);
        let fields = spanned.into_inner();
        let name = fields.name.clone().unwrap_or_default();
        let err = |message: String| Error::Scenario {
            path: path.into(),
            line,
            name: if name.is_empty() {
                format!("#{}", i + 1)
            } else {
                name.clone()
            },
            message,
        };
        if name.trim().is_empty() {
            return Err(err("has no name".into()));
        }
        if let Some(other) = dirs.insert(slug(&name), name.clone()) {
            return Err(err(format!(
                "its name is too close to {other:?}'s: both would work in {}/",
                slug(&name)
            )));
        }
        let s = scenario(fields.or(&file.defaults), name.clone(), line, base).map_err(err)?;
        scenarios.push(s);
    }
    Ok(Matrix {
        path: path.into(),
        jobs: file.jobs,
        scenarios,
    })
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// A scenario's folder name: letters and digits, the rest as `-`.
fn slug(name: &str) -> String {
    let s: String = name
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    s.trim_matches('-').to_string()
}

fn scenario(f: Fields, name: String, line: usize, base: &Path) -> Result<Scenario, String> {
    let board: VirtualBoard = f
        .board
        .as_deref()
        .ok_or("no board (qemu-x86_64-sd, qemu-x86_64-nuc or qemu-imx6-nitrogen6x)")?
        .parse()
        .map_err(|e: flasher_qemu::Error| e.to_string())?;
    let card = match (f.card, f.image) {
        (Some(card), None) => {
            if f.build_args.is_some() {
                return Err("build_args only go with image (a card is already built)".into());
            }
            CardSource::Given(base.join(card))
        }
        (None, Some(image)) => {
            let args = f.build_args.unwrap_or_default();
            // Checked now, so that a typo fails before any VM runs.
            build_args(board, Path::new("IMAGE"), Path::new("CARD"), &args)?;
            CardSource::Build {
                image: base.join(image),
                args,
            }
        }
        (Some(_), Some(_)) => return Err("gives both card and image: choose one".into()),
        (None, None) => {
            return Err("needs a card (a card file) or an image (to build a card from)".into())
        }
    };
    let size = f
        .target_size
        .as_deref()
        .map(flasher_qemu::parse_size)
        .transpose()
        .map_err(|e| e.to_string())?;
    let target =
        match (f.no_target.unwrap_or(false), f.target, size) {
            (true, None, None) => TargetSpec::None,
            (true, _, _) => return Err("no_target = true with a target or target_size".into()),
            (false, Some(path), size) => TargetSpec::File {
                path: base.join(path),
                size,
            },
            (false, None, Some(size)) => TargetSpec::Fresh(size),
            (false, None, None) => return Err(
                "needs a target (a file), a target_size (a fresh blank target) or no_target = true"
                    .into(),
            ),
        };
    let faults = f
        .faults
        .unwrap_or_default()
        .iter()
        .map(|s| s.parse::<Fault>().map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let verdict = f.expect.unwrap_or(Verdict::Success);
    let class = match f.class {
        None => Vec::new(),
        Some(Classes::One(c)) => vec![c],
        Some(Classes::Any(cs)) => cs,
    };
    if verdict == Verdict::Error {
        return Err("expect = \"error\": a run the harness cannot make never passes".into());
    }
    if verdict == Verdict::Success && (!class.is_empty() || f.message.is_some()) {
        return Err("a class or message is expected of a successful run".into());
    }
    Ok(Scenario {
        name,
        line,
        board,
        card,
        target,
        faults,
        append: f.append.unwrap_or_default(),
        timeout: Duration::from_secs(f.timeout.unwrap_or(DEFAULT_TIMEOUT_S)),
        card_writes: if f.discard_card_writes.unwrap_or(false) {
            CardWrites::Discard
        } else {
            CardWrites::Persist
        },
        expect: Expectation {
            verdict,
            class,
            message: f.message,
        },
    })
}

/// `mkflasher build`'s arguments for a card built from `image`.
fn build_args(
    board: VirtualBoard,
    image: &Path,
    card: &Path,
    extra: &[String],
) -> Result<crate::cmd::build::Args, String> {
    #[derive(Parser)]
    #[command(name = "mkflasher build")]
    struct Build {
        #[command(flatten)]
        args: crate::cmd::build::Args,
    }
    let fixed = [
        "mkflasher build".into(),
        "--board".into(),
        board.name().into(),
        "--payload".into(),
        image.as_os_str().to_owned(),
        "--output".into(),
        card.as_os_str().to_owned(),
    ];
    let all = fixed
        .into_iter()
        .chain(extra.iter().map(std::ffi::OsString::from));
    Build::try_parse_from(all)
        .map(|b| b.args)
        .map_err(|e| format!("build_args: {}", e.render().to_string().trim()))
}

/// How to run a matrix.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Runs at once: this, else the file's `jobs`, else the usable CPUs.
    pub jobs: Option<usize>,
    /// Where the scenarios' folders and the built cards go.
    pub work_dir: PathBuf,
    /// A line on standard error as each scenario ends.
    pub progress: bool,
}

/// One scenario's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioResult {
    pub name: String,
    pub expect: Expectation,
    /// The run met the expectation.
    pub passed: bool,
    /// What differs from the expectation, when it was not met.
    pub mismatch: Option<String>,
    /// The scenario's folder: its target (when fresh), console log, events,
    /// the harness's scratch files.
    pub work_dir: PathBuf,
    /// The run, as `mkflasher qemu --json` reports it.
    pub report: Report,
}

impl ScenarioResult {
    fn new(name: String, expect: Expectation, work_dir: PathBuf, report: Report) -> Self {
        let mismatch = expect.check(&report).err();
        ScenarioResult {
            name,
            expect,
            passed: mismatch.is_none(),
            mismatch,
            work_dir,
            report,
        }
    }

    /// The scenario as a JUnit test case: a failure when the expectation was
    /// not met (an error when the harness could not run the VM).
    pub fn test_case(&self) -> TestCase {
        let r = &self.report;
        let problem = self.mismatch.as_ref().map(|why| {
            let message = match &r.message {
                Some(m) => format!("{why}: {m}"),
                None => why.clone(),
            };
            Problem {
                errored: r.verdict == Verdict::Error,
                kind: format!("expected {}, got {}", self.expect, r.kind()),
                text: r.details(&message),
                message,
            }
        });
        let mut out = vec![
            format!("expected: {}", self.expect),
            format!("verdict: {}", r.kind()),
        ];
        if !r.phases.is_empty() {
            out.push(format!("phases: {}", r.phase_names()));
        }
        out.push(format!("work directory: {}", self.work_dir.display()));
        out.push(r.system_out());
        TestCase {
            name: self.name.clone(),
            classname: r.classname(),
            time_s: r.elapsed_s,
            problem,
            system_out: out.join("\n").trim_end().to_string(),
        }
    }
}

/// The whole matrix's result (`mkflasher qemu-matrix --json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// [`SUMMARY_VERSION`].
    pub version: u32,
    pub matrix: PathBuf,
    pub jobs: usize,
    /// Wall-clock seconds, card builds included.
    pub elapsed_s: f64,
    pub passed: usize,
    pub failed: usize,
    /// In the file's order.
    pub scenarios: Vec<ScenarioResult>,
}

impl Summary {
    fn new(matrix: &Path, jobs: usize, elapsed: Duration, scenarios: Vec<ScenarioResult>) -> Self {
        let passed = scenarios.iter().filter(|s| s.passed).count();
        Summary {
            version: SUMMARY_VERSION,
            matrix: matrix.into(),
            jobs,
            elapsed_s: elapsed.as_secs_f64(),
            passed,
            failed: scenarios.len() - passed,
            scenarios,
        }
    }

    /// Ok when every scenario met its expectation, else [`Error::Unmet`].
    pub fn check(&self) -> Result<(), Error> {
        if self.failed == 0 {
            return Ok(());
        }
        let names: Vec<&str> = self
            .scenarios
            .iter()
            .filter(|s| !s.passed)
            .map(|s| s.name.as_str())
            .collect();
        Err(Error::Unmet {
            failed: self.failed,
            total: self.scenarios.len(),
            names: names.join(", "),
        })
    }

    /// Pretty-printed JSON with a final newline.
    pub fn to_json(&self) -> std::io::Result<String> {
        let mut text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        text.push('\n');
        Ok(text)
    }

    /// One JUnit test suite (`mkflasher qemu-matrix FILE`), one test case
    /// per scenario ([`ScenarioResult::test_case`]).
    pub fn junit(&self) -> std::io::Result<String> {
        let cases: Vec<TestCase> = self.scenarios.iter().map(|s| s.test_case()).collect();
        let properties = [
            ("matrix", self.matrix.display().to_string()),
            ("jobs", self.jobs.to_string()),
        ];
        junit_suite(
            &format!("mkflasher qemu-matrix {}", self.matrix.display()),
            self.elapsed_s,
            &properties,
            &cases,
        )
    }

    /// The table for people: one row per scenario.
    pub fn table(&self) -> String {
        let rows: Vec<[String; 6]> = self
            .scenarios
            .iter()
            .map(|s| {
                [
                    if s.passed { "pass" } else { "FAIL" }.to_string(),
                    s.name.clone(),
                    s.report.board.clone(),
                    s.expect.to_string(),
                    s.report.kind(),
                    format!("{:.0} s", s.report.elapsed_s),
                ]
            })
            .collect();
        let head = ["result", "scenario", "board", "expected", "got", "time"].map(String::from);
        let mut widths = [0; 6];
        for row in std::iter::once(&head).chain(&rows) {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&head).chain(&rows) {
            let cells: Vec<String> = row
                .iter()
                .zip(widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            out += cells.join("  ").trim_end();
            out.push('\n');
        }
        for s in self.scenarios.iter().filter(|s| !s.passed) {
            if let Some(why) = &s.mismatch {
                out += &format!("{}: {why}\n", s.name);
            }
        }
        out += &format!(
            "{} of {} scenarios met their expectation ({} at a time, {:.0} s)\n",
            self.passed,
            self.scenarios.len(),
            self.jobs,
            self.elapsed_s
        );
        out
    }
}

/// The scenarios that must run one after the other (they share a card or a
/// target file), each group in the file's order, the groups in the order of
/// their first scenario.
pub fn groups(m: &Matrix) -> Vec<Vec<usize>> {
    let n = m.scenarios.len();
    let mut parent: Vec<usize> = (0..n).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let mut owner: HashMap<String, usize> = HashMap::new();
    for (i, s) in m.scenarios.iter().enumerate() {
        let mut keys = vec![card_key(s)];
        if let TargetSpec::File { path, .. } = &s.target {
            keys.push(format!("target:{}", absolute(path).display()));
        }
        for key in keys {
            let j = *owner.entry(key).or_insert(i);
            let (a, b) = (root(&mut parent, i), root(&mut parent, j));
            parent[a.max(b)] = a.min(b);
        }
    }
    let mut by_root: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for i in 0..n {
        let r = root(&mut parent, i);
        by_root.entry(r).or_default().push(i);
    }
    by_root.into_values().collect()
}

/// Scenarios with equal keys share a card.
fn card_key(s: &Scenario) -> String {
    match &s.card {
        CardSource::Given(p) => format!("card:{}", absolute(p).display()),
        CardSource::Build { image, args } => format!(
            "build:{}\0{}\0{}",
            s.board.name(),
            absolute(image).display(),
            args.join("\0")
        ),
    }
}

/// `p` made absolute (through links where it exists), to compare paths.
fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| std::path::absolute(p).unwrap_or(p.into()))
}

/// The jobs to run at once: `asked`, else the file's, else the usable CPUs.
pub fn jobs(asked: Option<usize>, m: &Matrix) -> usize {
    asked
        .or(m.jobs)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1)
}

/// Run every scenario of `m` and report. Err only when the work directory
/// cannot be made; a scenario that cannot run is reported with the `error`
/// verdict. Whether every scenario met its expectation: [`Summary::check`].
pub fn run(m: &Matrix, opts: &RunOptions) -> crate::Result<Summary> {
    let start = Instant::now();
    let jobs = jobs(opts.jobs, m);
    std::fs::create_dir_all(&opts.work_dir)
        .with_context(|| format!("creating {}", opts.work_dir.display()))?;
    let groups = groups(m);
    let results: Mutex<Vec<Option<ScenarioResult>>> = Mutex::new(vec![None; m.scenarios.len()]);
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let total = m.scenarios.len();
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(groups.len()) {
            scope.spawn(|| loop {
                let Some(group) = groups.get(next.fetch_add(1, Ordering::Relaxed)) else {
                    return;
                };
                let mut cards: HashMap<String, Result<PathBuf, String>> = HashMap::new();
                for &i in group {
                    let r = run_one(&m.scenarios[i], i, &opts.work_dir, &mut cards);
                    if opts.progress {
                        let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                        eprintln!(
                            "mkflasher qemu-matrix: [{n}/{total}] {}: {} ({}, {:.0} s)",
                            r.name,
                            if r.passed { "pass" } else { "FAIL" },
                            r.report.kind(),
                            r.report.elapsed_s
                        );
                    }
                    results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
                }
            });
        }
    });
    let scenarios = results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|r| r.expect("every group ran"))
        .collect();
    Ok(Summary::new(&m.path, jobs, start.elapsed(), scenarios))
}

/// One scenario, in its folder under `work`; `cards` holds the cards its
/// group built so far (by [`card_key`]).
fn run_one(
    s: &Scenario,
    index: usize,
    work: &Path,
    cards: &mut HashMap<String, Result<PathBuf, String>>,
) -> ScenarioResult {
    let dir = work.join(slug(&s.name));
    let card_path = match &s.card {
        CardSource::Given(p) => p.clone(),
        CardSource::Build { .. } => {
            work.join("cards")
                .join(format!("{}-{}.img", slug(&s.name), s.board.name()))
        }
    };
    let target = match &s.target {
        TargetSpec::File { path, .. } => Some(path.clone()),
        TargetSpec::Fresh(_) => Some(dir.join("target.img")),
        TargetSpec::None => None,
    };
    let mut opts = QemuOptions::new(s.board, card_path, target);
    opts.target_size = match s.target {
        TargetSpec::File { size, .. } => size,
        TargetSpec::Fresh(size) => Some(size),
        TargetSpec::None => None,
    };
    opts.events = Some(dir.join("events.jsonl"));
    opts.timeout = s.timeout;
    opts.faults = s.faults.clone();
    opts.append = s.append.clone();
    opts.work_dir = Some(dir.join("qemu"));
    opts.card_writes = s.card_writes;
    let finish =
        |report: Report| ScenarioResult::new(s.name.clone(), s.expect.clone(), dir.clone(), report);
    let prepared = prepare(s, index, &dir, &opts, cards);
    let opts = match prepared {
        Ok(card) => QemuOptions { card, ..opts },
        Err(message) => return finish(Report::from_error(&opts, message)),
    };
    let console = dir.join("console.log");
    let (report, _) = qemu_report::run_reported(&opts, Some(&console), true);
    finish(report)
}

/// The scenario's folder, its fresh target and its card (built when the
/// group has not built it yet): the card to boot, or why the scenario
/// cannot run.
fn prepare(
    s: &Scenario,
    index: usize,
    dir: &Path,
    opts: &QemuOptions,
    cards: &mut HashMap<String, Result<PathBuf, String>>,
) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir.join("qemu"))
        .map_err(|e| format!("creating {}: {e}", dir.display()))?;
    if let (TargetSpec::Fresh(_), Some(t)) = (&s.target, &opts.target) {
        // Fresh: the harness creates it blank at its size.
        match std::fs::remove_file(t) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(format!("removing the old target {}: {e}", t.display()))
            }
            _ => {}
        }
    }
    let CardSource::Build { image, args } = &s.card else {
        return Ok(opts.card.clone());
    };
    cards
        .entry(card_key(s))
        .or_insert_with(|| {
            let card = &opts.card;
            let built = (|| {
                std::fs::create_dir_all(card.parent().unwrap_or(Path::new(".")))
                    .map_err(|e| e.to_string())?;
                let _ = std::fs::remove_file(card);
                let build = build_args(s.board, image, card, args)?;
                let log_path = card.with_extension("build.log");
                let mut log = std::fs::File::create(&log_path)
                    .map_err(|e| format!("creating {}: {e}", log_path.display()))?;
                crate::cmd::build::run_to(&build, &mut log).map_err(|e| flasher::error::report(&e))
            })();
            tracing::debug!(
                "scenario {index}: card {} built: {}",
                card.display(),
                built.is_ok()
            );
            built
                .map(|()| card.clone())
                .map_err(|e| format!("building the card from {}: {e}", image.display()))
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qemu_report::tests::{attr, elements, python_junit_check, tags};
    use flasher_format::Phase;
    use flasher_qemu::PhaseTime;

    fn matrix(text: &str) -> Result<Matrix, Error> {
        parse(text, Path::new("/m/matrix.toml"))
    }

    fn message(text: &str) -> String {
        matrix(text).unwrap_err().to_string()
    }

    const GOOD: &str = r#"
jobs = 3

[defaults]
board = "qemu-x86_64-sd"
card = "cards/sd.img"
target_size = "64M"
timeout = 200

[[scenario]]
name = "happy path"

[[scenario]]
name = "too small"
target_size = "16M"
expect = "refused"
class = 3

[[scenario]]
name = "write error"
board = "qemu-x86_64-nuc"
image = "/images/os.img"
build_args = ["--cmdline", "flasher.verify=full"]
target = "/t/nuc.img"
target_size = "64M"
faults = ["io-error@4M"]
append = ["flasher.verify=full"]
expect = "failure"
class = [4, 5]
message = "4 MiB"

[[scenario]]
name = "no disk"
card = "/cards/other.img"
no_target = true
"#;

    #[test]
    fn a_matrix_parses_with_defaults_and_resolved_paths() {
        let m = matrix(GOOD).unwrap();
        assert_eq!(m.jobs, Some(3));
        let [happy, small, werr, nodisk] = &m.scenarios[..] else {
            panic!("{:?}", m.scenarios)
        };
        assert_eq!((happy.name.as_str(), happy.line), ("happy path", 10));
        assert_eq!(happy.card, CardSource::Given("/m/cards/sd.img".into()));
        assert_eq!(happy.target, TargetSpec::Fresh(64 << 20));
        assert_eq!(happy.timeout, Duration::from_secs(200));
        assert_eq!(happy.expect.verdict, Verdict::Success);
        assert_eq!(small.line, 13);
        assert_eq!(small.target, TargetSpec::Fresh(16 << 20));
        assert_eq!(small.expect.class, [ErrorClass::TargetRefused]);
        assert_eq!(small.card, happy.card);
        assert_eq!(werr.board, VirtualBoard::Nuc);
        assert_eq!(
            werr.card,
            CardSource::Build {
                image: "/images/os.img".into(),
                args: vec!["--cmdline".into(), "flasher.verify=full".into()]
            }
        );
        assert_eq!(
            werr.target,
            TargetSpec::File {
                path: "/t/nuc.img".into(),
                size: Some(64 << 20)
            }
        );
        assert_eq!(werr.faults, [Fault::IoError { offset: 4 << 20 }]);
        assert_eq!(
            werr.expect.class,
            [ErrorClass::WriteIo, ErrorClass::VerifyMismatch]
        );
        assert_eq!(werr.expect.message.as_deref(), Some("4 MiB"));
        assert_eq!(werr.append, ["flasher.verify=full"]);
        // Its own card and target: none of the defaults' card or target.
        assert_eq!(nodisk.target, TargetSpec::None);
        assert_eq!(nodisk.card, CardSource::Given("/cards/other.img".into()));
        assert_eq!(jobs(Some(1), &m), 1);
        assert_eq!(jobs(None, &m), 3);
        // The two scenarios on cards/sd.img run one after the other.
        assert_eq!(groups(&m), [vec![0, 1], vec![2], vec![3]]);
        let shared = GOOD.replace("/cards/other.img", "cards/sd.img");
        assert_eq!(groups(&matrix(&shared).unwrap()), [vec![0, 1, 3], vec![2]]);
        let shared = GOOD.replace(
            "card = \"/cards/other.img\"\nno_target = true",
            "image = \"/x.img\"\ntarget = \"/t/nuc.img\"",
        );
        assert_eq!(groups(&matrix(&shared).unwrap()), [vec![0, 1], vec![2, 3]]);
        // The defaults' build_args go with their image, not with a card.
        let m = matrix(
            "[defaults]\nboard = \"qemu-x86_64-sd\"\nimage = \"os.img\"\nno_target = true\n\
             build_args = [\"--cmdline\", \"x\"]\n\
             [[scenario]]\nname = \"a\"\n[[scenario]]\nname = \"b\"\ncard = \"c.img\"\n\
             [[scenario]]\nname = \"c\"\nbuild_args = []\n",
        )
        .unwrap();
        let cards: Vec<&CardSource> = m.scenarios.iter().map(|s| &s.card).collect();
        let build = |args: &[&str]| CardSource::Build {
            image: "/m/os.img".into(),
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        assert_eq!(
            cards,
            [
                &build(&["--cmdline", "x"]),
                &CardSource::Given("/m/c.img".into()),
                &build(&[])
            ]
        );
        assert_eq!(groups(&m), [vec![0], vec![1], vec![2]]);
    }

    #[test]
    fn errors_name_the_file_the_line_and_the_scenario() {
        let base = "[[scenario]]\nname = \"a\"\nboard = \"qemu-x86_64-sd\"\ncard = \"c.img\"\ntarget_size = \"64M\"\n";
        assert!(matrix(base).is_ok());
        let cases = [
            (
                base.replace("card", "image") + "card = \"x\"\n",
                ":1: scenario \"a\": gives both card and image",
            ),
            (
                base.replace("qemu-x86_64-sd", "qemu-arm"),
                ":1: scenario \"a\": unknown virtual board",
            ),
            (
                base.to_string() + "faults = [\"io-error@lots\"]\n",
                ":1: scenario \"a\":",
            ),
            (base.to_string() + "expect = \"error\"\n", "never passes"),
            (
                base.to_string() + "class = 3\n",
                "expected of a successful run",
            ),
            (
                base.to_string() + "expect = \"refused\"\nclass = 9\n",
                "matrix.toml: ",
            ),
            (
                base.to_string() + "expect = \"bricked\"\n",
                "unknown variant `bricked`",
            ),
            (
                base.to_string() + "trget = \"t.img\"\n",
                "unknown field `trget`",
            ),
            (
                base.replace(
                    "card = \"c.img\"",
                    "image = \"os.img\"\nbuild_args = [\"--frobnicate\"]",
                ),
                "build_args: error: unexpected argument '--frobnicate'",
            ),
            (base.replace("target_size = \"64M\"", ""), "needs a target"),
            (base.replace("card = \"c.img\"\n", ""), "needs a card"),
            (
                format!("{base}\n[[scenario]]\nname = \"A\"\n"),
                ":7: scenario \"A\": its name is too close to \"a\"'s",
            ),
            (
                format!("{base}\n[[scenario]]\nboard = \"qemu-x86_64-sd\"\n"),
                ":7: scenario \"#2\": has no name",
            ),
            ("jobs = 0\n".to_string() + base, "jobs = 0"),
            ("jobs = 2\n".into(), "no [[scenario]] tables"),
            ("[[scenario]\n".into(), "TOML parse error at line 1"),
        ];
        for (text, want) in cases {
            let got = message(&text);
            assert!(got.starts_with("/m/matrix.toml"), "{got}");
            assert!(got.contains(want), "want {want:?} in {got:?}\n{text}");
        }
    }

    /// Every matrix the repository ships parses: docs/matrices/*.toml and
    /// the example in docs/qemu.md.
    #[test]
    fn the_shipped_matrix_files_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let dir = root.join("docs/matrices");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let m = load(&path).unwrap_or_else(|e| panic!("{e}"));
                assert!(!m.scenarios.is_empty(), "{}", path.display());
                n += 1;
            }
        }
        assert!(n > 0, "no matrix files in {}", dir.display());
        let doc = std::fs::read_to_string(root.join("docs/qemu.md")).unwrap();
        let section = &doc[doc.find("## Scenario matrices").expect("the section")..];
        let example = section
            .split("```toml\n")
            .nth(1)
            .and_then(|s| s.split("```").next())
            .expect("a toml example");
        let m = parse(example, &root.join("docs/qemu.md")).unwrap_or_else(|e| panic!("{e}"));
        assert!(m.scenarios.len() >= 2);
    }

    fn report(verdict: Verdict, class: Option<ErrorClass>, message: Option<&str>) -> Report {
        let opts = QemuOptions::new(VirtualBoard::Sd, "/c/card.img", Some("/t/t.img".into()));
        let mut r = Report::from_error(&opts, String::new());
        r.verdict = verdict;
        r.message = message.map(String::from);
        r.error_class = class.map(|c| qemu_report::ClassReport {
            class: c,
            meaning: c.describe().into(),
        });
        r.elapsed_s = 12.5;
        r.phases = vec![PhaseTime {
            phase: Phase::Starting,
            start_ms: 0,
            duration_ms: 400,
        }];
        r
    }

    fn expect(verdict: Verdict, class: &[ErrorClass], message: Option<&str>) -> Expectation {
        Expectation {
            verdict,
            class: class.to_vec(),
            message: message.map(String::from),
        }
    }

    #[test]
    fn expectations_match_verdict_class_and_message() {
        use ErrorClass::*;
        let ok = report(Verdict::Success, None, None);
        let small = report(
            Verdict::Refused,
            Some(TargetRefused),
            Some("target too small: 16 MiB"),
        );
        let lost = report(Verdict::Failure, Some(VerifyMismatch), Some("at 4 MiB"));
        let none = report(Verdict::Error, None, Some("QEMU missing"));
        let success = expect(Verdict::Success, &[], None);
        assert_eq!(success.check(&ok), Ok(()));
        assert_eq!(
            success.check(&small).unwrap_err(),
            "expected success, got refused: class 3 (target refused)"
        );
        assert!(success.check(&none).is_err());
        let refused3 = expect(Verdict::Refused, &[TargetRefused], Some("too small"));
        assert_eq!(refused3.check(&small), Ok(()));
        assert_eq!(
            refused3.check(&lost).unwrap_err(),
            "expected refused (class 3), got failure: class 5 (verify mismatch)"
        );
        assert!(refused3.check(&ok).is_err());
        // `failure` takes a refusal too; the class must be one of those listed.
        let failure45 = expect(Verdict::Failure, &[WriteIo, VerifyMismatch], None);
        assert_eq!(failure45.check(&lost), Ok(()));
        assert_eq!(
            failure45.check(&small).unwrap_err(),
            "expected failure (class 4 or 5), got refused: class 3 (target refused)"
        );
        assert_eq!(expect(Verdict::Failure, &[], None).check(&small), Ok(()));
        let classless = report(Verdict::Failure, None, Some("bad event line"));
        assert_eq!(
            failure45.check(&classless).unwrap_err(),
            "expected failure (class 4 or 5), got failure without a blink class"
        );
        assert_eq!(
            expect(Verdict::Refused, &[], Some("used up"))
                .check(&small)
                .unwrap_err(),
            "expected a message containing \"used up\", got \"target too small: 16 MiB\""
        );
        assert!(expect(Verdict::Failure, &[], None).check(&none).is_err());
    }

    fn summary() -> Summary {
        use ErrorClass::*;
        let results = vec![
            ScenarioResult::new(
                "happy & <well>".into(),
                expect(Verdict::Success, &[], None),
                "/w/happy".into(),
                report(Verdict::Success, None, None),
            ),
            ScenarioResult::new(
                "too small".into(),
                expect(Verdict::Refused, &[TargetRefused], None),
                "/w/too-small".into(),
                report(Verdict::Refused, Some(TargetRefused), Some("too small")),
            ),
            ScenarioResult::new(
                "expected to refuse".into(),
                expect(Verdict::Refused, &[TargetRefused], None),
                "/w/x".into(),
                report(Verdict::Success, None, None),
            ),
            ScenarioResult::new(
                "no qemu".into(),
                expect(Verdict::Success, &[], None),
                "/w/q".into(),
                report(Verdict::Error, None, Some("QEMU missing\u{1b}[0m")),
            ),
        ];
        Summary::new(
            Path::new("/m/matrix.toml"),
            2,
            Duration::from_secs(61),
            results,
        )
    }

    #[test]
    fn the_summary_counts_parses_back_and_fails_on_an_unmet_expectation() {
        let s = summary();
        assert_eq!((s.passed, s.failed), (2, 2));
        let back: Summary = serde_json::from_str(&s.to_json().unwrap()).unwrap();
        assert_eq!(back, s);
        let v: serde_json::Value = serde_json::from_str(&s.to_json().unwrap()).unwrap();
        assert_eq!(v["scenarios"][1]["passed"], true);
        assert_eq!(v["scenarios"][1]["report"]["verdict"], "refused");
        assert_eq!(v["scenarios"][1]["expect"]["class"][0], 3);
        assert_eq!(
            v["scenarios"][2]["mismatch"],
            "expected refused (class 3), got success"
        );
        assert_eq!(
            s.check().unwrap_err().to_string(),
            "2 of 4 scenarios did not meet their expectation: expected to refuse, no qemu"
        );
        let table = s.table();
        assert!(table.contains("pass    too small           qemu-x86_64-sd  refused (class 3)  refused: class 3 (target refused)  12 s"), "{table}");
        assert!(
            table.contains("2 of 4 scenarios met their expectation (2 at a time, 61 s)"),
            "{table}"
        );
        let all_ok = Summary::new(Path::new("m"), 1, Duration::ZERO, s.scenarios[..2].to_vec());
        assert!(all_ok.check().is_ok());
    }

    #[test]
    fn junit_has_one_suite_and_a_case_per_scenario() {
        let xml = summary().junit().unwrap();
        let els = elements(&xml);
        assert_eq!(
            tags(&els),
            "testsuite properties property property \
             testcase system-out testcase system-out \
             testcase failure system-out testcase error system-out",
            "{xml}"
        );
        let suite = &els[0];
        assert_eq!(
            ["name", "tests", "failures", "errors", "time"].map(|a| attr(suite, a)),
            [
                "mkflasher qemu-matrix /m/matrix.toml",
                "4",
                "1",
                "1",
                "61.000"
            ]
        );
        assert_eq!(attr(&els[4], "name"), "happy & <well>");
        assert_eq!(attr(&els[4], "classname"), "mkflasher.qemu.qemu-x86_64-sd");
        assert_eq!(attr(&els[4], "time"), "12.500");
        // An expected refusal passes, and says what it was.
        assert!(
            els[7].2.contains(
                "expected: refused (class 3)\nverdict: refused: class 3 (target refused)"
            ),
            "{}",
            els[7].2
        );
        assert_eq!(
            attr(&els[9], "type"),
            "expected refused (class 3), got success"
        );
        assert_eq!(
            attr(&els[9], "message"),
            "expected refused (class 3), got success"
        );
        assert_eq!(attr(&els[12], "type"), "expected success, got error");
        assert_eq!(
            attr(&els[12], "message"),
            "expected success, got error: QEMU missing\u{fffd}[0m"
        );
        if let Some(said) = python_junit_check(&xml) {
            assert!(said.starts_with("1 1 4"), "{said}");
        }
    }
}
