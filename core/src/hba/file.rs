//! The whole file as records that keep their exact bytes.

use super::rule::Rule;
use super::token::tokenize;

#[derive(Debug, Clone)]
pub enum RecordKind {
    Blank,
    Comment,
    Rule(Rule),
    /// `include`, `include_if_exists`, `include_dir` (PostgreSQL 16+): kept, never interpreted.
    Include,
    /// A line PostgreSQL would reject; kept byte for byte, with the reason.
    Invalid(String),
}

#[derive(Debug, Clone)]
pub struct Record {
    /// The physical lines of this record, each ending in `\n` (see [`HbaFile::final_newline`]).
    pub raw: Vec<u8>,
    pub kind: RecordKind,
}

impl Record {
    pub fn from_rule(rule: Rule) -> Record {
        let mut raw = rule.render().into_bytes();
        raw.push(b'\n');
        Record {
            raw,
            kind: RecordKind::Rule(rule),
        }
    }

    pub fn rule(&self) -> Option<&Rule> {
        match &self.kind {
            RecordKind::Rule(r) => Some(r),
            _ => None,
        }
    }

    pub fn is_comment(&self) -> bool {
        matches!(self.kind, RecordKind::Comment)
    }

    /// The record as text, without its line terminator, for messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw)
            .trim_end_matches(['\n', '\r'])
            .to_string()
    }

    /// Ends in a continuation backslash (only possible at the end of the file): a line
    /// written directly after it would be joined to it.
    pub fn dangles(&self) -> bool {
        continues(&self.raw)
    }

    fn lines(&self) -> usize {
        self.raw.iter().filter(|&&b| b == b'\n').count()
    }
}

#[derive(Debug, Clone, Default)]
pub struct HbaFile {
    pub records: Vec<Record>,
    /// Whether the file ended with a newline; records always carry one internally and the last
    /// one is dropped on render when the original had none, so an untouched file round-trips.
    pub final_newline: bool,
}

impl HbaFile {
    /// Parses any bytes; never fails (lines PostgreSQL would reject become `Invalid` records).
    pub fn parse(bytes: &[u8]) -> HbaFile {
        let final_newline = bytes.is_empty() || bytes.ends_with(b"\n");
        let mut records = Vec::new();
        let mut physical = bytes.split_inclusive(|&b| b == b'\n').peekable();
        while let Some(first) = physical.next() {
            let mut raw = first.to_vec();
            // A backslash that ends a line (after stripping CR/LF) continues the record.
            while continues(&raw) {
                match physical.next() {
                    Some(next) => raw.extend_from_slice(next),
                    None => break,
                }
            }
            if !raw.ends_with(b"\n") {
                raw.push(b'\n');
            }
            let kind = classify(&raw);
            records.push(Record { raw, kind });
        }
        HbaFile {
            records,
            final_newline,
        }
    }

    pub fn render(&self) -> Vec<u8> {
        let mut out: Vec<u8> = self
            .records
            .iter()
            .flat_map(|r| r.raw.iter().copied())
            .collect();
        if !self.final_newline && out.ends_with(b"\n") {
            out.pop();
        }
        out
    }

    /// 1-based number of the first physical line of record `index`.
    pub fn line_of(&self, index: usize) -> usize {
        1 + self.records[..index]
            .iter()
            .map(Record::lines)
            .sum::<usize>()
    }

    /// Index of the record that contains physical line `line` (1-based).
    pub fn record_at_line(&self, line: usize) -> Option<usize> {
        let mut next = 1;
        for (i, r) in self.records.iter().enumerate() {
            next += r.lines();
            if line < next {
                return Some(i);
            }
        }
        None
    }

    pub fn rules(&self) -> impl Iterator<Item = (usize, &Rule)> {
        self.records
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.rule().map(|rule| (i, rule)))
    }

    pub fn has_includes(&self) -> bool {
        self.records
            .iter()
            .any(|r| matches!(r.kind, RecordKind::Include))
    }
}

fn continues(raw: &[u8]) -> bool {
    let mut end = raw.len();
    while end > 0 && (raw[end - 1] == b'\n' || raw[end - 1] == b'\r') {
        end -= 1;
    }
    raw.ends_with(b"\n") && end > 0 && raw[end - 1] == b'\\'
}

/// Joins continuation lines the way PostgreSQL does: strip CR/LF, drop the trailing backslash.
fn logical_line(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::new();
    for line in text.split_inclusive('\n') {
        let line = line.trim_end_matches(['\n', '\r']);
        // Every backslash that ends a physical line here is a continuation (or ends the file,
        // where PostgreSQL drops it too).
        out.push_str(line.strip_suffix('\\').unwrap_or(line));
    }
    out
}

fn classify(raw: &[u8]) -> RecordKind {
    let line = logical_line(raw);
    let t = tokenize(&line);
    let Some(first) = t.fields.first() else {
        return if t.comment.is_some() {
            RecordKind::Comment
        } else {
            RecordKind::Blank
        };
    };
    if first.len() == 1
        && !first[0].quoted
        && ["include", "include_if_exists", "include_dir"].contains(&first[0].value.as_str())
    {
        return RecordKind::Include;
    }
    match Rule::from_fields(&t.fields, t.comment) {
        Ok(rule) => RecordKind::Rule(rule),
        Err(e) => RecordKind::Invalid(e),
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

    #[test]
    fn round_trips_bytes() {
        for text in [
            DEBIAN,
            "",
            "\n",
            "no newline at end",
            "a\r\nb\r\n",
            "x \\\ny\n",
            "trailing \\",
        ] {
            assert_eq!(
                HbaFile::parse(text.as_bytes()).render(),
                text.as_bytes(),
                "{text:?}"
            );
        }
        let bin = b"host all \xff\xfe 1.2.3.4/32 md5\n";
        assert_eq!(HbaFile::parse(bin).render(), bin);
    }

    #[test]
    fn classifies_records() {
        let f = HbaFile::parse(DEBIAN.as_bytes());
        assert_eq!(f.rules().count(), 5);
        assert!(f.records[0].is_comment());
        assert!(matches!(f.records[2].kind, RecordKind::Blank));
        let f = HbaFile::parse(b"include_dir conf.d\nhosts all all x md5\n");
        assert!(f.has_includes());
        assert!(matches!(f.records[1].kind, RecordKind::Invalid(_)));
    }

    #[test]
    fn continuation_lines_form_one_record() {
        let f = HbaFile::parse(b"host all \\\n  all 10.0.0.0/8 \\\n  md5\nlocal all all peer\n");
        assert_eq!(f.records.len(), 2);
        assert_eq!(f.rules().next().unwrap().1.method, "md5");
        assert_eq!(f.line_of(1), 4);
        assert_eq!(f.record_at_line(2), Some(0));
        assert_eq!(f.record_at_line(4), Some(1));
        assert_eq!(f.record_at_line(5), None);
    }
}
