//! Fuzz target: arbitrary bytes through the Guacamole parser and the display model.
//!
//! The first byte picks a chunk size so that chunked feeding is exercised too. Every parsed
//! instruction is applied; handler errors are expected and ignored; frames are flattened at
//! each sync. Any panic, overflow or out-of-bounds access is a bug.
//!
//! Run: `scripts/fuzz [SECONDS]` (seeds from the shared recordings, then `cargo fuzz run`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use session_recorder::guac::Parser;
use session_recorder::render::{Display, Effect};

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first).max(1);
    let mut parser = Parser::new();
    let mut display = Display::new();
    for piece in rest.chunks(chunk) {
        parser.push(piece);
        loop {
            match parser.next() {
                Ok(Some(instr)) => {
                    if let Ok(Effect::Sync { .. } | Effect::Pointer { .. }) = display.apply(&instr)
                    {
                        if display.is_dirty() {
                            let frame = display.flatten();
                            assert_eq!(frame.pixels.len(), (frame.width * frame.height) as usize);
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    assert!(e.offset() <= parser.offset() + rest.len() as u64);
                    return;
                }
            }
        }
    }
    // Snapshots must round-trip whatever state the input left behind (small displays only:
    // PNG-compressing big layers on every run would starve the fuzzer).
    let (w, h) = display.size();
    if u64::from(w) * u64::from(h) > 128 * 128 {
        return;
    }
    let snap = display.snapshot();
    let mut back = Display::from_snapshot(&snap).expect("own snapshot restores");
    assert_eq!(back.flatten(), display.flatten());
});
