//! Headers as the gateway lists them, decoded from the MessagePack that
//! `get-headers` returns: an array of `[name, value]` string pairs.

/// Headers in order, repeated names kept, names in lower case.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    /// The first value of `name` (compared without regard to case).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0.iter().filter(move |(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn from_msgpack(data: &[u8]) -> Result<Headers, String> {
        let mut reader = Reader { data, at: 0 };
        let count = reader.array()?;
        let mut pairs = Vec::with_capacity(count.min(data.len()));
        for _ in 0..count {
            if reader.array()? != 2 {
                return Err("a header is not a [name, value] pair".into());
            }
            pairs.push((reader.string()?, reader.string()?));
        }
        Ok(Headers(pairs))
    }
}

/// The few MessagePack forms the host uses: arrays, and strings or binaries.
struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, count: usize) -> Result<&[u8], String> {
        let end = self.at.checked_add(count).filter(|&end| end <= self.data.len());
        let end = end.ok_or("truncated MessagePack")?;
        let taken = &self.data[self.at..end];
        self.at = end;
        Ok(taken)
    }

    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn uint(&mut self, width: usize) -> Result<usize, String> {
        Ok(self.take(width)?.iter().fold(0usize, |n, &b| (n << 8) | b as usize))
    }

    fn array(&mut self) -> Result<usize, String> {
        match self.byte()? {
            tag @ 0x90..=0x9f => Ok((tag & 0x0f) as usize),
            0xdc => self.uint(2),
            0xdd => self.uint(4),
            tag => Err(format!("expected a MessagePack array, found 0x{tag:02x}")),
        }
    }

    fn string(&mut self) -> Result<String, String> {
        let len = match self.byte()? {
            tag @ 0xa0..=0xbf => (tag & 0x1f) as usize,
            0xd9 | 0xc4 => self.uint(1)?,
            0xda | 0xc5 => self.uint(2)?,
            0xdb | 0xc6 => self.uint(4)?,
            tag => return Err(format!("expected a MessagePack string, found 0x{tag:02x}")),
        };
        Ok(String::from_utf8_lossy(self.take(len)?).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_pairs_in_order_with_repeated_names() {
        // [["a", "1"], ["set-cookie", "x"], ["set-cookie", "y"]] as Python's msgpack writes it
        let data = b"\x93\x92\xa1a\xa11\x92\xaaset-cookie\xa1x\x92\xaaset-cookie\xa1y";
        let headers = Headers::from_msgpack(data).unwrap();
        assert_eq!(headers.get("A"), Some("1"));
        assert_eq!(headers.get_all("set-cookie").collect::<Vec<_>>(), ["x", "y"]);
        assert_eq!(headers.len(), 3);
    }

    #[test]
    fn decodes_long_forms() {
        let value = "v".repeat(300);
        let mut data = vec![0xdc, 0, 1, 0x92, 0xa1, b'k', 0xda, 1, 44];
        data.extend_from_slice(value.as_bytes());
        assert_eq!(Headers::from_msgpack(&data).unwrap().get("k"), Some(value.as_str()));
    }

    #[test]
    fn refuses_truncated_input() {
        assert!(Headers::from_msgpack(b"\x91\x92\xa5ab").is_err());
        assert!(Headers::from_msgpack(b"\xdd\xff\xff\xff\xff").map(|h| h.len()).is_err());
    }
}
