//! What a guest reports while it runs: log lines (`host.log`, WASI stdout and
//! stderr) and metric records. They wait here, bounded, until the gateway
//! drains them between calls into the guest: the host never calls Python
//! from a guest's stack.

use memchr::memchr;

use crate::failure::escaped;

/// Log lines per instance in one request: a chatty or hostile guest cannot flood the log.
pub const MAX_LOG_LINES: u32 = 100;
/// Longer lines are cut (and marked so).
pub const MAX_LOG_BYTES: usize = 4096;
/// Records kept before the guest pauses for the gateway to take them.
pub const MAX_PENDING_RECORDS: usize = 64;

/// WIT `enum log-level`, and where WASI output goes.
pub const INFO: u8 = 2;
pub const WARN: u8 = 3;

#[derive(Clone, Debug, PartialEq)]
pub struct LogLine {
    pub level: u8,
    pub text: String,
    pub truncated: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub metric: u32,
    pub labels: Vec<String>,
    pub value: f64,
}

impl Record {
    pub fn size(&self) -> usize {
        self.labels.iter().map(String::len).sum::<usize>() + 16
    }
}

/// Everything waiting to be drained, and the per-request log budget.
#[derive(Debug)]
pub struct Events {
    pub lines: Vec<LogLine>,
    pub records: Vec<Record>,
    /// Lines over the budget, counted instead of kept.
    pub dropped: u32,
    /// Lines logged in this request so far.
    logged: u32,
    /// The bytes of the lines and records waiting: they count against the guest's quota.
    held: usize,
    /// How many bytes may wait, set from the quota before a host call adds any.
    room: usize,
    /// WASI stdout and stderr until a line is whole.
    output: [Vec<u8>; 2],
}

impl Default for Events {
    fn default() -> Events {
        Events {
            lines: Vec::new(),
            records: Vec::new(),
            dropped: 0,
            logged: 0,
            held: 0,
            room: usize::MAX,
            output: Default::default(),
        }
    }
}

impl Events {
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty() && self.records.is_empty() && self.dropped == 0
    }

    pub fn held(&self) -> usize {
        self.held
    }

    /// Bounds what may wait from now on: `room` more bytes than wait already.
    pub fn set_room(&mut self, room: usize) {
        self.room = self.held.saturating_add(room);
    }

    /// Keeps a metric record; false when it does not fit the quota.
    pub fn record(&mut self, record: Record) -> bool {
        if self.held + record.size() > self.room {
            return false;
        }
        self.held += record.size();
        self.records.push(record);
        true
    }

    /// What waits to be drained, moved out.
    pub fn take(&mut self) -> Events {
        self.held = 0;
        Events {
            lines: std::mem::take(&mut self.lines),
            records: std::mem::take(&mut self.records),
            dropped: std::mem::take(&mut self.dropped),
            room: self.room,
            ..Events::default()
        }
    }

    /// A new request: the log budget starts again, partial output is dropped.
    pub fn new_request(&mut self) {
        self.logged = 0;
        self.output = Default::default();
    }

    /// A log line of `length` bytes whose first bytes are `text`; dropped (and
    /// counted) past the budget of lines, or when it does not fit the quota.
    pub fn log(&mut self, level: u8, text: &[u8], length: usize) {
        self.logged += 1;
        let text = &text[..text.len().min(MAX_LOG_BYTES)];
        if self.logged > MAX_LOG_LINES || self.held + text.len() > self.room {
            self.dropped += 1;
            return;
        }
        let text = escaped(&String::from_utf8_lossy(text)).into_owned();
        self.held += text.len();
        self.lines.push(LogLine { level, text, truncated: length > MAX_LOG_BYTES });
    }

    /// Whether more lines would be kept: past the budget, output need not even be scanned.
    pub fn wants_lines(&self) -> bool {
        self.logged < MAX_LOG_LINES
    }

    /// WASI output on stdout (1) or stderr (2): a log line per line written.
    ///
    /// Runtimes write piecemeal (Go's panic output comes a few bytes at a
    /// time), so a line waits until it is whole; a line longer than
    /// `MAX_LOG_BYTES` is logged in pieces. It looks at no more of `data` than
    /// the lines it keeps: a guest cannot make the host scan what it would drop.
    pub fn output(&mut self, fd: u32, mut data: &[u8]) {
        let (level, slot) = if fd == 1 { (INFO, 0) } else { (WARN, 1) };
        while !data.is_empty() {
            if !self.wants_lines() {
                // Past the budget nothing more is kept, nor looked at: a write counts as one line dropped.
                self.output[slot].clear();
                self.dropped += 1;
                return;
            }
            let room = MAX_LOG_BYTES - self.output[slot].len();
            let window = &data[..data.len().min(room + 1)];
            let (line_end, rest) = match memchr(b'\n', window) {
                Some(newline) => (newline, newline + 1),
                None if data.len() > room => (room, room),
                None => {
                    self.output[slot].extend_from_slice(data);
                    return;
                }
            };
            let mut line = std::mem::take(&mut self.output[slot]);
            line.extend_from_slice(&data[..line_end]);
            self.log(level, &line, line.len());
            data = &data[rest..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(events: &Events) -> Vec<&str> {
        events.lines.iter().map(|line| line.text.as_str()).collect()
    }

    #[test]
    fn output_is_logged_a_line_at_a_time() {
        let mut events = Events::default();
        events.output(2, b"panic: ");
        events.output(2, b"boom\ngorou");
        events.output(2, b"tine 1\n");
        assert_eq!(texts(&events), ["panic: boom", "goroutine 1"]);
        assert!(events.lines.iter().all(|line| line.level == WARN));
    }

    #[test]
    fn a_long_line_is_logged_in_pieces() {
        let mut events = Events::default();
        let data = vec![b'x'; MAX_LOG_BYTES * 2 + 10];
        events.output(1, &data);
        assert_eq!(events.lines.len(), 2);
        assert!(events.lines.iter().all(|line| line.text.len() == MAX_LOG_BYTES));
        events.output(1, b"\n");
        assert_eq!(events.lines[2].text.len(), 10);
    }

    #[test]
    fn a_newline_right_after_a_full_line_ends_it() {
        let mut events = Events::default();
        let mut data = vec![b'x'; MAX_LOG_BYTES];
        data.push(b'\n');
        events.output(1, &data);
        assert_eq!(events.lines.len(), 1);
    }

    #[test]
    fn lines_past_the_budget_are_counted_not_kept() {
        let mut events = Events::default();
        for _ in 0..MAX_LOG_LINES + 5 {
            events.log(INFO, b"hello", 5);
        }
        assert_eq!((events.lines.len() as u32, events.dropped), (MAX_LOG_LINES, 5));
        events.output(1, b"a\nb\n");
        assert_eq!(events.dropped, 6);
    }

    #[test]
    fn a_long_message_is_cut_and_marked() {
        let mut events = Events::default();
        events.log(INFO, &[b'y'; MAX_LOG_BYTES], 1 << 20);
        assert!(events.lines[0].truncated);
    }

    #[test]
    fn what_does_not_fit_the_quota_does_not_wait() {
        let mut events = Events::default();
        events.set_room(8);
        events.log(INFO, b"12345", 5);
        events.log(INFO, b"12345", 5);
        assert_eq!((events.lines.len(), events.dropped), (1, 1));
        assert!(!events.record(Record { metric: 0, labels: vec![], value: 1.0 }));
        events.take();
        assert_eq!(events.held(), 0);
    }

    #[test]
    fn a_new_request_starts_the_budget_again() {
        let mut events = Events::default();
        for _ in 0..MAX_LOG_LINES {
            events.log(INFO, b"x", 1);
        }
        assert!(!events.wants_lines());
        events.new_request();
        assert!(events.wants_lines());
    }
}
