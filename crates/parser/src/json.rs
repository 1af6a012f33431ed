//! Minimal JSON writing for the `extra` column: tape values back to compact JSON.

use simd_json::prelude::*;
use simd_json::tape::{array, object, Value};

/// Writes `s` as a JSON string literal.
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => {
                out.extend_from_slice(&bytes[start..i]);
                out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(escape);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

enum Frame<'t, 'i> {
    Array(array::Iter<'t, 'i>, bool),
    Object(object::Iter<'t, 'i>, bool),
}

/// Writes a tape value as compact JSON.
///
/// Iterative with a heap stack: a payload may nest arrays tens of thousands deep, and unknown
/// fields must be kept whatever their shape, so recursion could overflow the thread's stack.
pub(crate) fn write_value(out: &mut Vec<u8>, value: Value<'_, '_>) {
    let mut stack: Vec<Frame<'_, '_>> = Vec::new();
    let mut next = Some(value);
    loop {
        if let Some(value) = next.take() {
            if let Some(s) = value.as_str() {
                write_str(out, s);
            } else if let Some(items) = value.as_array() {
                out.push(b'[');
                stack.push(Frame::Array(items.iter(), true));
            } else if let Some(members) = value.as_object() {
                out.push(b'{');
                stack.push(Frame::Object(members.iter(), true));
            } else {
                write_scalar(out, value);
            }
        }
        let Some(frame) = stack.last_mut() else {
            return;
        };
        match frame {
            Frame::Array(items, first) => match items.next() {
                Some(item) => {
                    if !std::mem::take(first) {
                        out.push(b',');
                    }
                    next = Some(item);
                }
                None => {
                    out.push(b']');
                    stack.pop();
                }
            },
            Frame::Object(members, first) => match members.next() {
                Some((key, item)) => {
                    if !std::mem::take(first) {
                        out.push(b',');
                    }
                    write_str(out, key);
                    out.push(b':');
                    next = Some(item);
                }
                None => {
                    out.push(b'}');
                    stack.pop();
                }
            },
        }
    }
}

fn write_scalar(out: &mut Vec<u8>, value: Value<'_, '_>) {
    if let Some(b) = value.as_bool() {
        out.extend_from_slice(if b { b"true" } else { b"false" });
    } else if value.is_i64() {
        out.extend_from_slice(value.as_i64().unwrap_or_default().to_string().as_bytes());
    } else if value.is_u64() {
        out.extend_from_slice(value.as_u64().unwrap_or_default().to_string().as_bytes());
    } else if let Some(n) = value.as_f64().filter(|n| n.is_finite()) {
        out.extend_from_slice(format!("{n:?}").as_bytes());
    } else {
        out.extend_from_slice(b"null");
    }
}
