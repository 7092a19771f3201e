//! Guest memory as the canonical ABI uses it.
//!
//! Everything the host reads from a guest is bounds-checked here and strings
//! are strictly UTF-8: a bad pointer, length or encoding is an ABI violation,
//! never a host error. Values go the other way through `lower`: one
//! `cabi_realloc` and one copy, into memory the guest then owns.

use wasmtime::AsContextMut;

use crate::failure::{Failure, nested};
use crate::instance::InstanceState;

fn out_of_bounds(memory: &[u8], ptr: u32, len: usize, what: &str) -> Failure {
    Failure::abi(format!("{what}: {len} bytes at {ptr:#x} run past the end of guest memory ({} bytes)", memory.len()))
}

fn range(memory: &[u8], ptr: u32, len: usize, what: &str) -> Result<std::ops::Range<usize>, Failure> {
    let start = ptr as usize;
    match start.checked_add(len) {
        Some(end) if end <= memory.len() => Ok(start..end),
        _ => Err(out_of_bounds(memory, ptr, len, what)),
    }
}

pub fn bytes<'a>(memory: &'a [u8], ptr: u32, len: usize, what: &str) -> Result<&'a [u8], Failure> {
    Ok(&memory[range(memory, ptr, len, what)?])
}

pub fn bytes_mut<'a>(memory: &'a mut [u8], ptr: u32, len: usize, what: &str) -> Result<&'a mut [u8], Failure> {
    let range = range(memory, ptr, len, what)?;
    Ok(&mut memory[range])
}

pub fn text<'a>(memory: &'a [u8], ptr: u32, len: u32, what: &str) -> Result<&'a str, Failure> {
    std::str::from_utf8(bytes(memory, ptr, len as usize, what)?)
        .map_err(|error| Failure::abi(format!("{what} is not valid UTF-8 (at byte {})", error.valid_up_to())))
}

/// At most the first `max` bytes of a string, cut at a character boundary: the string must lie in
/// memory, and what is read of it must be UTF-8 (the rest is not looked at).
pub fn text_prefix<'a>(memory: &'a [u8], ptr: u32, len: u32, max: usize, what: &str) -> Result<&'a str, Failure> {
    let raw = bytes(memory, ptr, len as usize, what)?;
    let kept = &raw[..raw.len().min(max)];
    match std::str::from_utf8(kept) {
        Ok(text) => Ok(text),
        // The cut fell inside a character: end before it.
        Err(error) if error.error_len().is_none() && kept.len() < raw.len() => {
            Ok(std::str::from_utf8(&kept[..error.valid_up_to()]).expect("valid up to here"))
        }
        Err(error) => Err(Failure::abi(format!("{what} is not valid UTF-8 (at byte {})", error.valid_up_to()))),
    }
}

/// A lowered `list<string>` or `list<list<u8>>`: its elements' `(ptr, len)` pairs, read as needed.
pub fn pairs<'a>(
    memory: &'a [u8],
    ptr: u32,
    count: u32,
    what: &str,
) -> Result<impl Iterator<Item = (u32, u32)> + 'a, Failure> {
    let raw = bytes(memory, ptr, count as usize * 8, what)?;
    Ok(raw.chunks_exact(8).map(|pair| (le_u32(&pair[..4]), le_u32(&pair[4..]))))
}

pub fn le_u32(bytes: &[u8]) -> u32 {
    u32::from_le_bytes(bytes.try_into().expect("four bytes"))
}

/// Checks a return area the canonical ABI aligns: for a call that must not act before it knows
/// its result can be written.
pub fn check_area(memory: &[u8], ptr: u32, len: usize, align: u32, what: &str) -> Result<(), Failure> {
    if !ptr.is_multiple_of(align) {
        return Err(Failure::abi(format!("{what}: return area {ptr:#x} is not {align}-byte aligned")));
    }
    bytes(memory, ptr, len, what).map(|_| ())
}

/// Writes a result into the guest's return area, which the canonical ABI aligns.
pub fn write_area(memory: &mut [u8], ptr: u32, data: &[u8], align: u32, what: &str) -> Result<(), Failure> {
    check_area(memory, ptr, data.len(), align, what)?;
    bytes_mut(memory, ptr, data.len(), what)?.copy_from_slice(data);
    Ok(())
}

/// Writes flat `u32`s (pointers, lengths, tags) into a 4-aligned return area.
pub fn write_u32s(memory: &mut [u8], ptr: u32, values: &[u32], what: &str) -> Result<(), Failure> {
    let mut area = [0u8; 64];
    for (slot, value) in area.chunks_exact_mut(4).zip(values) {
        slot.copy_from_slice(&value.to_le_bytes());
    }
    write_area(memory, ptr, &area[..values.len() * 4], 4, what)
}

/// Copies `data` into memory the guest allocates with `cabi_realloc`: one call, one copy.
///
/// The guest owns the allocation afterwards, as the canonical ABI says. An
/// empty value needs no allocation: any aligned pointer will do.
pub async fn lower<S>(store: &mut S, data: &[u8], align: u32, what: &str) -> Result<u32, Failure>
where
    S: AsContextMut<Data = InstanceState> + Send,
{
    if data.is_empty() {
        return Ok(align);
    }
    let exports = store.as_context().data().exports();
    let len = u32::try_from(data.len()).map_err(|_| Failure::memory(format!("{what}: {} bytes", data.len())))?;
    let ptr = exports.realloc.call_async(&mut *store, (0, 0, align, len)).await.map_err(|error| nested(error, what))?;
    if ptr == 0 {
        return Err(Failure::memory(format!("cabi_realloc returned 0x0 for {len} bytes of {what}")));
    }
    if !ptr.is_multiple_of(align) {
        return Err(Failure::abi(format!("cabi_realloc returned {ptr:#x} for {len} bytes of {what}")));
    }
    let memory = exports.memory.data_mut(&mut *store);
    bytes_mut(memory, ptr, data.len(), &format!("cabi_realloc's result for {what}"))?.copy_from_slice(data);
    Ok(ptr)
}

/// Lowers a string: its `(ptr, len)`.
pub async fn lower_text<S>(store: &mut S, value: &str, what: &str) -> Result<[u32; 2], Failure>
where
    S: AsContextMut<Data = InstanceState> + Send,
{
    Ok([lower(store, value.as_bytes(), 1, what).await?, value.len() as u32])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_past_the_end_of_memory_is_an_abi_violation() {
        let memory = [0u8; 16];
        let failure = bytes(&memory, 10, 8, "the name").unwrap_err();
        assert_eq!(failure, Failure::abi("the name: 8 bytes at 0xa run past the end of guest memory (16 bytes)"));
    }

    #[test]
    fn a_pointer_and_length_that_overflow_are_out_of_bounds() {
        let memory = [0u8; 16];
        assert!(bytes(&memory, u32::MAX, usize::MAX, "x").is_err());
    }

    #[test]
    fn text_must_be_utf8() {
        let memory = *b"ok\xff";
        let failure = text(&memory, 0, 3, "the value").unwrap_err();
        assert_eq!(failure.detail, "the value is not valid UTF-8 (at byte 2)");
    }

    #[test]
    fn a_text_prefix_is_cut_before_a_character_the_cut_splits() {
        let memory = "aé".as_bytes(); // 'é' is two bytes
        assert_eq!(text_prefix(memory, 0, 3, 2, "the error").unwrap(), "a");
        assert_eq!(text_prefix(memory, 0, 3, 3, "the error").unwrap(), "aé");
    }

    #[test]
    fn a_text_prefix_must_be_utf8_and_in_memory() {
        assert!(text_prefix(b"a\xffb", 0, 3, 2, "x").is_err());
        assert!(text_prefix(b"abc", 0, 9, 2, "x").is_err());
    }

    #[test]
    fn a_return_area_must_be_aligned() {
        let mut memory = [0u8; 16];
        let failure = write_u32s(&mut memory, 2, &[1], "the result").unwrap_err();
        assert!(failure.detail.contains("not 4-byte aligned"), "{}", failure.detail);
        write_u32s(&mut memory, 4, &[1, 2], "the result").unwrap();
        assert_eq!(&memory[4..12], &[1, 0, 0, 0, 2, 0, 0, 0]);
    }

    #[test]
    fn pairs_read_a_lowered_list() {
        let mut memory = vec![0u8; 32];
        write_u32s(&mut memory, 8, &[100, 3, 200, 4], "list").unwrap();
        assert_eq!(pairs(&memory, 8, 2, "list").unwrap().collect::<Vec<_>>(), vec![(100, 3), (200, 4)]);
        assert!(pairs(&memory, 8, 4, "list").is_err());
    }
}
