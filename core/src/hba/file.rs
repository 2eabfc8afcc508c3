//! The whole file as records over its original bytes.
//!
//! Memory is bounded by design, because a task may be pointed at a 50 MB file: the bytes are
//! held once, and a record is 12 bytes — a span of those bytes, or the index of a line this edit
//! adds. Rules are parsed again whenever they are looked at instead of being kept parsed (a
//! parsed rule costs about ten times its text), and consecutive lines that are not rules form
//! one "gap" record, so even a file of blank lines costs little more than its bytes. Rendering
//! streams the records to a writer; an untouched file comes back byte for byte.

use std::io::{self, Write};

use super::error::HbaError;
use super::rule::Rule;
use super::token::tokenize;

/// What a logical line (physical lines joined by backslash continuations) is.
#[derive(Debug, Clone)]
pub enum LineKind {
    Blank,
    Comment,
    Rule(Rule),
    /// `include`, `include_if_exists`, `include_dir` (PostgreSQL 16+): kept, never interpreted.
    Include,
    /// A line PostgreSQL would reject; kept byte for byte, with the reason.
    Invalid(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// One rule, a span of the source.
    Rule,
    /// Lines that are not rules (blank, comments, includes, invalid lines), a span of the source.
    Gap,
    /// A rule this edit wrote: `at` indexes `HbaFile::added`.
    NewRule,
}

#[derive(Debug, Clone, Copy)]
struct Record {
    at: u32,
    len: u32,
    kind: Kind,
}

#[derive(Debug, Clone, Default)]
pub struct HbaFile {
    source: Vec<u8>,
    records: Vec<Record>,
    /// Rendered lines of rules added by edits (each ends with the file's line ending).
    added: Vec<Vec<u8>>,
    /// Whether the file ended with a newline; when it did not, the last record is written
    /// without one, so an untouched file round-trips and an appended rule keeps the style.
    final_newline: bool,
    /// Lines written by edits end in CRLF when the file's do.
    crlf: bool,
}

/// The largest file the model holds (its spans are 32-bit).
pub const MAX_FILE: usize = u32::MAX as usize;

impl HbaFile {
    /// Parses any bytes; only a file over [`MAX_FILE`] is refused (lines PostgreSQL would
    /// reject are kept as they are and reported by [`HbaFile::line_kinds`]).
    pub fn parse(bytes: impl Into<Vec<u8>>) -> Result<HbaFile, HbaError> {
        let source: Vec<u8> = bytes.into();
        if source.len() > MAX_FILE {
            return Err(HbaError::Plan(format!(
                "the file is {} bytes; pg_hba.conf files over {MAX_FILE} bytes are not supported",
                source.len()
            )));
        }
        let final_newline = source.is_empty() || source.ends_with(b"\n");
        let crlf = source
            .iter()
            .position(|&b| b == b'\n')
            .is_some_and(|i| i > 0 && source[i - 1] == b'\r');
        // Two passes: count, then fill a vector of exactly that size (no doubling slack).
        let count = Self::scan(&source, |_| {});
        let mut records = Vec::with_capacity(count);
        Self::scan(&source, |r| records.push(r));
        Ok(HbaFile {
            source,
            records,
            added: Vec::new(),
            final_newline,
            crlf,
        })
    }

    /// Splits `source` into records, handing each to `emit`; returns how many there were.
    fn scan(source: &[u8], mut emit: impl FnMut(Record)) -> usize {
        let mut n = 0;
        let mut gap: Option<(usize, usize)> = None;
        for (start, end) in logical_lines(source) {
            if matches!(classify(&source[start..end]), LineKind::Rule(_)) {
                if let Some((s, e)) = gap.take() {
                    emit(span(s, e, Kind::Gap));
                    n += 1;
                }
                emit(span(start, end, Kind::Rule));
                n += 1;
            } else {
                gap = Some((gap.map_or(start, |(s, _)| s), end));
            }
        }
        if let Some((s, e)) = gap {
            emit(span(s, e, Kind::Gap));
            n += 1;
        }
        n
    }

    /// The original bytes, as read.
    pub fn source(&self) -> &[u8] {
        &self.source
    }

    fn bytes(&self, r: &Record) -> &[u8] {
        match r.kind {
            Kind::NewRule => &self.added[r.at as usize],
            _ => &self.source[r.at as usize..(r.at + r.len) as usize],
        }
    }

    /// The line ending new lines get.
    fn eol(&self) -> &'static [u8] {
        if self.crlf {
            b"\r\n"
        } else {
            b"\n"
        }
    }

    /// Writes the file. Every record but the last ends with a line ending (one is added after
    /// a record that had none, i.e. the old last line when something was appended after it).
    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        let last = self.records.len().saturating_sub(1);
        for (i, r) in self.records.iter().enumerate() {
            let b = self.bytes(r);
            let has_eol = b.ends_with(b"\n");
            if i == last && !self.final_newline && has_eol {
                // The file had no final newline: keep it that way.
                let cut = if self.crlf && b.ends_with(b"\r\n") {
                    2
                } else {
                    1
                };
                w.write_all(&b[..b.len() - cut])?;
                continue;
            }
            w.write_all(b)?;
            if !has_eol && (i != last || self.final_newline) {
                w.write_all(self.eol())?;
            }
        }
        Ok(())
    }

    /// The file as bytes (for tests and small files; large ones are streamed with
    /// [`HbaFile::write_to`]).
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out).expect("writing to memory");
        out
    }

    /// Whether rendering gives exactly `bytes`, compared as it streams (no copy).
    pub fn renders_as(&self, bytes: &[u8]) -> bool {
        struct Compare<'a> {
            rest: &'a [u8],
            same: bool,
        }
        impl Write for Compare<'_> {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                if self.same && self.rest.starts_with(buf) {
                    self.rest = &self.rest[buf.len()..];
                } else {
                    self.same = false;
                }
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut c = Compare {
            rest: bytes,
            same: true,
        };
        let _ = self.write_to(&mut c);
        c.same && c.rest.is_empty()
    }

    /// SHA-256 of the rendered file, streamed (to recognise it on disk later).
    pub fn sha256(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        struct Hasher(Sha256);
        impl Write for Hasher {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.update(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut h = Hasher(Sha256::new());
        let _ = self.write_to(&mut h);
        h.0.finalize().into()
    }

    /// Number of records (rules and gaps between them).
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The rule record `index` holds, parsed now.
    pub fn rule(&self, index: usize) -> Option<Rule> {
        let r = self.records.get(index)?;
        if r.kind == Kind::Gap {
            return None;
        }
        match classify(self.bytes(r)) {
            LineKind::Rule(rule) => Some(rule),
            _ => None,
        }
    }

    /// Every rule with its record index, parsed as the iterator goes.
    pub fn rules(&self) -> impl Iterator<Item = (usize, Rule)> + '_ {
        (0..self.records.len()).filter_map(|i| self.rule(i).map(|r| (i, r)))
    }

    pub fn rule_count(&self) -> usize {
        self.records.iter().filter(|r| r.kind != Kind::Gap).count()
    }

    /// Record `index` as text without its final line ending, for messages.
    pub fn text(&self, index: usize) -> String {
        self.records
            .get(index)
            .map(|r| line_text(self.bytes(r)))
            .unwrap_or_default()
    }

    /// 1-based number of the first physical line of record `index`.
    pub fn line_of(&self, index: usize) -> usize {
        1 + self.records[..index.min(self.records.len())]
            .iter()
            .map(|r| newlines(self.bytes(r)))
            .sum::<usize>()
    }

    /// The text of the logical line that starts at or contains physical line `line`
    /// (1-based), as PostgreSQL numbers lines in its messages.
    pub fn line_text(&self, line: usize) -> Option<String> {
        let mut first = 1;
        for r in &self.records {
            let b = self.bytes(r);
            let lines = newlines(b).max(1);
            if line < first + lines {
                if r.kind != Kind::Gap {
                    return Some(line_text(b));
                }
                let mut n = first;
                for (s, e) in logical_lines(b) {
                    let next = n + newlines(&b[s..e]).max(1);
                    if line < next {
                        return Some(line_text(&b[s..e]));
                    }
                    n = next;
                }
                return None;
            }
            first += lines;
        }
        None
    }

    /// Each logical line that is not a rule, with its 1-based line number and kind.
    pub fn gap_lines(&self) -> impl Iterator<Item = (usize, LineKind)> + '_ {
        let mut first = 1;
        self.records.iter().flat_map(move |r| {
            let b = self.bytes(r);
            let at = first;
            first += newlines(b);
            let lines: Vec<(usize, LineKind)> = if r.kind == Kind::Gap {
                let mut n = at;
                logical_lines(b)
                    .map(|(s, e)| {
                        let line = (n, classify(&b[s..e]));
                        n += newlines(&b[s..e]);
                        line
                    })
                    .collect()
            } else {
                Vec::new()
            };
            lines
        })
    }

    pub fn has_includes(&self) -> bool {
        self.gap_lines()
            .any(|(_, k)| matches!(k, LineKind::Include))
    }

    /// PostgreSQL's pg_hba.conf or at least something shaped like one: a rule, a comment, a
    /// blank line or an include. A file where every line is something else (a passwd file,
    /// a script, a binary) is not one, whatever its name.
    pub fn looks_like_hba(&self) -> bool {
        self.source.is_empty()
            || self.rule_count() > 0
            || self
                .gap_lines()
                .any(|(_, k)| !matches!(k, LineKind::Invalid(_)))
    }

    /// Ends in a continuation backslash (only possible at the end of the file): a line
    /// written directly after it would be joined to it.
    pub(crate) fn dangles(&self, index: usize) -> bool {
        self.records
            .get(index)
            .is_some_and(|r| continues(self.bytes(r)))
    }

    pub(crate) fn is_gap(&self, index: usize) -> bool {
        self.records.get(index).is_some_and(|r| r.kind == Kind::Gap)
    }

    /// A new record holding `rule`, rendered in the sample file's layout.
    fn new_record(&mut self, rule: &Rule) -> Record {
        let mut line = rule.render().into_bytes();
        line.extend_from_slice(self.eol());
        self.added.push(line);
        Record {
            at: (self.added.len() - 1) as u32,
            len: 0,
            kind: Kind::NewRule,
        }
    }

    pub(crate) fn insert_rule(&mut self, at: usize, rule: &Rule) {
        // Exactly one more: doubling a vector of a million records would double its memory.
        self.records.reserve_exact(1);
        let r = self.new_record(rule);
        self.records.insert(at, r);
    }

    pub(crate) fn replace_rule(&mut self, at: usize, rule: &Rule) {
        self.records[at] = self.new_record(rule);
    }

    pub(crate) fn remove_records(&mut self, mut drop: impl FnMut(usize) -> bool) -> usize {
        let before = self.records.len();
        let mut i = 0;
        self.records.retain(|_| {
            let d = drop(i);
            i += 1;
            !d
        });
        before - self.records.len()
    }

    /// Where a rule inserted "before" record `index` goes: above the comment lines directly
    /// over it (they describe it), unless those comments are the file's opening header. May
    /// split the gap above so those comments become their own record.
    pub(crate) fn block_start(&mut self, index: usize) -> usize {
        if index == 0 || !self.is_gap(index - 1) {
            return index;
        }
        let g = self.records[index - 1];
        let b = self.bytes(&g);
        // Offset within the gap where its trailing run of comment lines starts.
        let mut run_start = None;
        for (s, e) in logical_lines(b) {
            match classify(&b[s..e]) {
                LineKind::Comment => {
                    run_start.get_or_insert(s);
                }
                _ => run_start = None,
            }
        }
        match run_start {
            None => index,
            Some(0) if index - 1 == 0 => index,
            Some(0) => index - 1,
            Some(off) => {
                let head = span(g.at as usize, g.at as usize + off, Kind::Gap);
                let tail = span(g.at as usize + off, (g.at + g.len) as usize, Kind::Gap);
                self.records[index - 1] = head;
                self.records.insert(index, tail);
                index
            }
        }
    }

    /// The leading lines of the file that are blank or comments (the header an exclusive
    /// edit keeps), as a record; `None` when the file starts with something else.
    fn header(&self) -> Option<Record> {
        let first = self.records.first().filter(|r| r.kind == Kind::Gap)?;
        let b = self.bytes(first);
        let mut end = 0;
        for (s, e) in logical_lines(b) {
            if !matches!(classify(&b[s..e]), LineKind::Blank | LineKind::Comment) {
                break;
            }
            end = e;
        }
        (end > 0).then(|| span(first.at as usize, first.at as usize + end, Kind::Gap))
    }

    /// Rebuilds the file as its header followed by `body` (existing record indexes or new
    /// rules), for an exclusive edit.
    pub(crate) fn rebuild(&mut self, body: Vec<Result<usize, Rule>>) -> Result<(), HbaError> {
        let header = self.header();
        if let Some(h) = header.filter(|h| continues(self.bytes(h)) && !body.is_empty()) {
            return Err(HbaError::Plan(format!(
                "the comment `{}` ends with a continuation backslash at the end of the file, so rules written after it would be joined to it; remove the backslash first",
                line_text(self.bytes(&h)).lines().last().unwrap_or_default()
            )));
        }
        let mut records = Vec::with_capacity(body.len() + 1);
        records.extend(header);
        for item in body {
            match item {
                Ok(i) => records.push(self.records[i]),
                Err(rule) => records.push(self.new_record(&rule)),
            }
        }
        self.records = records;
        Ok(())
    }

    /// Whether any line other than blank lines, comments and rules is in the file.
    pub(crate) fn has_other_lines(&self) -> bool {
        self.gap_lines()
            .any(|(_, k)| !matches!(k, LineKind::Blank | LineKind::Comment))
    }
}

fn span(start: usize, end: usize, kind: Kind) -> Record {
    Record {
        at: start as u32,
        len: (end - start) as u32,
        kind,
    }
}

fn newlines(b: &[u8]) -> usize {
    b.iter().filter(|&&c| c == b'\n').count()
}

fn line_text(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .trim_end_matches(['\n', '\r'])
        .to_string()
}

/// (start, end) of each logical line of `b`: physical lines, with a line whose last
/// character before CR/LF is a backslash joined to the next one, as PostgreSQL reads them.
fn logical_lines(b: &[u8]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at >= b.len() {
            return None;
        }
        let start = at;
        loop {
            let end = b[at..]
                .iter()
                .position(|&c| c == b'\n')
                .map_or(b.len(), |p| at + p + 1);
            at = end;
            if !continues(&b[start..end]) || at >= b.len() {
                return Some((start, end));
            }
        }
    })
}

/// A line (with its terminator) whose text ends in a backslash: PostgreSQL joins the next
/// line to it, or drops the backslash at the end of the file.
fn continues(raw: &[u8]) -> bool {
    let mut end = raw.len();
    while end > 0 && (raw[end - 1] == b'\n' || raw[end - 1] == b'\r') {
        end -= 1;
    }
    end > 0 && raw[end - 1] == b'\\'
}

/// Joins continuation lines the way PostgreSQL does: strip CR/LF, drop the trailing backslash.
fn logical_line(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::new();
    for line in text.split_inclusive('\n') {
        let line = line.trim_end_matches(['\n', '\r']);
        out.push_str(line.strip_suffix('\\').unwrap_or(line));
    }
    out
}

/// What one logical line is.
pub fn classify(raw: &[u8]) -> LineKind {
    let line = logical_line(raw);
    let t = tokenize(&line);
    let Some(first) = t.fields.first() else {
        return if t.comment.is_some() {
            LineKind::Comment
        } else {
            LineKind::Blank
        };
    };
    if first.len() == 1
        && !first[0].quoted
        && ["include", "include_if_exists", "include_dir"].contains(&first[0].value.as_str())
    {
        return LineKind::Include;
    }
    match Rule::from_fields(&t.fields, t.comment) {
        Ok(rule) => LineKind::Rule(rule),
        Err(e) => LineKind::Invalid(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN: &str = "# PostgreSQL Client Authentication Configuration File\n\
        # ===================================================\n\
        \n\
        # Database administrative login by Unix domain socket\n\
        local   all             postgres                                peer\n\
        \n\
        # TYPE  DATABASE        USER            ADDRESS                 METHOD\n\
        \n\
        # \"local\" is for Unix domain socket connections only\n\
        local   all             all                                     peer\n\
        host    all             all             127.0.0.1/32            scram-sha-256\n\
        host    all             all             ::1/128                 scram-sha-256\n\
        local   replication     all                                     peer\n";

    fn parse(b: &[u8]) -> HbaFile {
        HbaFile::parse(b).unwrap()
    }

    #[test]
    fn round_trips_bytes() {
        for text in [
            DEBIAN,
            "",
            "\n",
            "no newline at end",
            "a\r\nb\r\n",
            "a\r\nb",
            "x \\\ny\n",
            "trailing \\",
            "\n\n\n",
        ] {
            let f = parse(text.as_bytes());
            assert_eq!(f.render(), text.as_bytes(), "{text:?}");
            assert!(f.renders_as(text.as_bytes()), "{text:?}");
        }
        let bin = b"host all \xff\xfe 1.2.3.4/32 md5\n";
        assert_eq!(parse(bin).render(), bin);
    }

    #[test]
    fn rules_and_gaps() {
        let f = parse(DEBIAN.as_bytes());
        assert_eq!(f.rule_count(), 5);
        // header gap, rule, gap, rule, rule, rule, rule
        assert_eq!(f.len(), 7);
        assert_eq!(f.line_of(1), 5);
        assert_eq!(f.line_text(5).unwrap().trim_end(), f.text(1).trim_end());
        assert_eq!(f.line_text(3).unwrap(), "");
        assert!(f.looks_like_hba());
        let f = parse(b"include_dir conf.d\nhosts all all x md5\n");
        assert!(f.has_includes());
        assert!(f.has_other_lines());
        assert!(matches!(
            f.gap_lines().nth(1),
            Some((2, LineKind::Invalid(_)))
        ));
        assert!(!parse(b"root:x:0:0:root:/root:/bin/bash\nbin:x:1:1\n").looks_like_hba());
    }

    #[test]
    fn continuation_lines_form_one_record() {
        let f = parse(b"host all \\\n  all 10.0.0.0/8 \\\n  md5\nlocal all all peer\n");
        assert_eq!(f.len(), 2);
        assert_eq!(f.rules().next().unwrap().1.method, "md5");
        assert_eq!(f.line_of(1), 4);
        assert!(f.line_text(2).unwrap().starts_with("host all"));
        assert!(f.line_text(4).unwrap().starts_with("local"));
        assert_eq!(f.line_text(5), None);
    }

    #[test]
    fn blank_lines_cost_one_record() {
        let f = parse("\n".repeat(10_000).as_bytes());
        assert_eq!(f.len(), 1);
    }
}
