//! Keysyms as text, pure: what one key press means in a keystroke log, the way guacamole-server's
//! `guaclog` writes it. Printable keys are their characters (Latin-1 keysyms and Unicode keysyms
//! `0x01000000 | codepoint`), other known keys are named (`<Tab>`, `<BackSpace>`, `<Return>`),
//! a key pressed while Ctrl, Alt, Meta, Super or Hyper is held is written with them
//! (`<Ctrl+c>`), and a keysym nobody knows is `<0xNNNN>`, never an error.
//!
//! [`super::extract`] turns the presses into batches; this module knows single keys only.

/// A key held down to change what other keys mean (Shift and AltGr change the character the
/// client sends instead, so they are not listed here: they print nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Modifier {
    /// Control.
    Ctrl,
    /// Alt.
    Alt,
    /// Meta.
    Meta,
    /// Super (the "Windows" key).
    Super,
    /// Hyper.
    Hyper,
}

impl Modifier {
    /// Every modifier, in the order a combination names them.
    pub const ALL: [Modifier; 5] = [
        Modifier::Ctrl,
        Modifier::Alt,
        Modifier::Meta,
        Modifier::Super,
        Modifier::Hyper,
    ];

    /// Its name in a combination.
    pub fn name(self) -> &'static str {
        match self {
            Modifier::Ctrl => "Ctrl",
            Modifier::Alt => "Alt",
            Modifier::Meta => "Meta",
            Modifier::Super => "Super",
            Modifier::Hyper => "Hyper",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// What one keysym is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// A key that types this character.
    Char(char),
    /// Return or Enter: ends a line (and a batch).
    Enter,
    /// BackSpace: removes the character before it.
    BackSpace,
    /// Another known key, by name (`Tab`, `Left`, `F5`).
    Named(&'static str),
    /// A modifier that changes what other keys mean.
    Modifier(Modifier),
    /// A key that prints nothing and names nothing (Shift, AltGr, Caps Lock).
    Silent,
    /// A keysym not known: written `<0xNNNN>`.
    Unknown(u32),
}

/// Known keys that are not characters, by keysym, sorted (guaclog's table, with BackSpace
/// spelled as X11 does).
const NAMED: &[(u32, Key)] = &[
    (0xFE03, Key::Silent), // AltGr
    (0xFF08, Key::BackSpace),
    (0xFF09, Key::Named("Tab")),
    (0xFF0B, Key::Named("Clear")),
    (0xFF0D, Key::Enter),
    (0xFF13, Key::Named("Pause")),
    (0xFF14, Key::Named("Scroll")),
    (0xFF15, Key::Named("SysReq")),
    (0xFF1B, Key::Named("Escape")),
    (0xFF50, Key::Named("Home")),
    (0xFF51, Key::Named("Left")),
    (0xFF52, Key::Named("Up")),
    (0xFF53, Key::Named("Right")),
    (0xFF54, Key::Named("Down")),
    (0xFF55, Key::Named("Page Up")),
    (0xFF56, Key::Named("Page Down")),
    (0xFF57, Key::Named("End")),
    (0xFF63, Key::Named("Insert")),
    (0xFF65, Key::Named("Undo")),
    (0xFF6A, Key::Named("Help")),
    (0xFF7F, Key::Named("Num")),
    (0xFF80, Key::Char(' ')),
    (0xFF8D, Key::Enter),
    (0xFF95, Key::Named("Home")),
    (0xFF96, Key::Named("Left")),
    (0xFF97, Key::Named("Up")),
    (0xFF98, Key::Named("Right")),
    (0xFF99, Key::Named("Down")),
    (0xFF9A, Key::Named("Page Up")),
    (0xFF9B, Key::Named("Page Down")),
    (0xFF9C, Key::Named("End")),
    (0xFF9E, Key::Named("Insert")),
    (0xFF9F, Key::Named("Delete")),
    (0xFFAA, Key::Char('*')),
    (0xFFAB, Key::Char('+')),
    (0xFFAD, Key::Char('-')),
    (0xFFAE, Key::Char('.')),
    (0xFFAF, Key::Char('/')),
    (0xFFB0, Key::Char('0')),
    (0xFFB1, Key::Char('1')),
    (0xFFB2, Key::Char('2')),
    (0xFFB3, Key::Char('3')),
    (0xFFB4, Key::Char('4')),
    (0xFFB5, Key::Char('5')),
    (0xFFB6, Key::Char('6')),
    (0xFFB7, Key::Char('7')),
    (0xFFB8, Key::Char('8')),
    (0xFFB9, Key::Char('9')),
    (0xFFBE, Key::Named("F1")),
    (0xFFBF, Key::Named("F2")),
    (0xFFC0, Key::Named("F3")),
    (0xFFC1, Key::Named("F4")),
    (0xFFC2, Key::Named("F5")),
    (0xFFC3, Key::Named("F6")),
    (0xFFC4, Key::Named("F7")),
    (0xFFC5, Key::Named("F8")),
    (0xFFC6, Key::Named("F9")),
    (0xFFC7, Key::Named("F10")),
    (0xFFC8, Key::Named("F11")),
    (0xFFC9, Key::Named("F12")),
    (0xFFCA, Key::Named("F13")),
    (0xFFCB, Key::Named("F14")),
    (0xFFCC, Key::Named("F15")),
    (0xFFCD, Key::Named("F16")),
    (0xFFCE, Key::Named("F17")),
    (0xFFCF, Key::Named("F18")),
    (0xFFD0, Key::Named("F19")),
    (0xFFD1, Key::Named("F20")),
    (0xFFD2, Key::Named("F21")),
    (0xFFD3, Key::Named("F22")),
    (0xFFD4, Key::Named("F23")),
    (0xFFD5, Key::Named("F24")),
    (0xFFE1, Key::Silent), // Shift
    (0xFFE2, Key::Silent),
    (0xFFE3, Key::Modifier(Modifier::Ctrl)),
    (0xFFE4, Key::Modifier(Modifier::Ctrl)),
    (0xFFE5, Key::Silent), // Caps Lock
    (0xFFE7, Key::Modifier(Modifier::Meta)),
    (0xFFE8, Key::Modifier(Modifier::Meta)),
    (0xFFE9, Key::Modifier(Modifier::Alt)),
    (0xFFEA, Key::Modifier(Modifier::Alt)),
    (0xFFEB, Key::Modifier(Modifier::Super)),
    (0xFFEC, Key::Modifier(Modifier::Super)),
    (0xFFED, Key::Modifier(Modifier::Hyper)),
    (0xFFEE, Key::Modifier(Modifier::Hyper)),
    (0xFFFF, Key::Named("Delete")),
];

/// Keysyms at or above this, with the high byte `0x01`, are Unicode code points.
const UNICODE_KEYSYM_BASE: u32 = 0x0100_0000;

/// What `keysym` is.
pub fn key(keysym: u32) -> Key {
    if let Ok(i) = NAMED.binary_search_by_key(&keysym, |(k, _)| *k) {
        return NAMED[i].1;
    }
    let codepoint = match keysym {
        0x20..=0x7E | 0xA0..=0xFF => Some(keysym),
        k if k & 0xFF00_0000 == UNICODE_KEYSYM_BASE => Some(k & 0x00FF_FFFF),
        _ => None,
    };
    match codepoint.and_then(char::from_u32) {
        Some(c) if !c.is_control() => Key::Char(c),
        _ => Key::Unknown(keysym),
    }
}

/// The modifiers held down, tracked from presses and releases.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Held(u8);

impl Held {
    /// Updates the held set with one key event; returns what the event means for a log: the
    /// key when it is a press, `None` for a release.
    pub fn update(&mut self, keysym: u32, pressed: bool) -> Option<Key> {
        let k = key(keysym);
        if let Key::Modifier(m) = k {
            match pressed {
                true => self.0 |= m.bit(),
                false => self.0 &= !m.bit(),
            }
        }
        pressed.then_some(k)
    }

    /// Whether any modifier is held.
    pub fn any(self) -> bool {
        self.0 != 0
    }

    /// Writes `k` pressed with the held modifiers as a combination (`<Ctrl+Alt+Delete>`,
    /// `<Ctrl+c>`) to `out`.
    pub fn write_combo(self, k: Key, out: &mut String) {
        out.push('<');
        for m in Modifier::ALL {
            if self.0 & m.bit() != 0 {
                out.push_str(m.name());
                out.push('+');
            }
        }
        write_key_name(k, out);
        out.push('>');
    }
}

/// Writes the bare name of `k` (no brackets): its character, or its name.
fn write_key_name(k: Key, out: &mut String) {
    match k {
        Key::Char(c) => out.push(c),
        Key::Enter => out.push_str("Return"),
        Key::BackSpace => out.push_str("BackSpace"),
        Key::Named(n) => out.push_str(n),
        Key::Modifier(m) => out.push_str(m.name()),
        Key::Silent => {}
        Key::Unknown(k) => out.push_str(&format!("0x{k:X}")),
    }
}

/// Writes `k`, pressed with no modifier held, as a log writes it: a character as itself,
/// anything else named in brackets (`<Tab>`, `<0x1234>`); Shift and the like write nothing.
pub fn write_key(k: Key, out: &mut String) {
    match k {
        Key::Char(c) => out.push(c),
        Key::Silent => {}
        _ => {
            out.push('<');
            write_key_name(k, out);
            out.push('>');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(events: &[(u32, bool)]) -> String {
        let mut held = Held::default();
        let mut out = String::new();
        for &(keysym, pressed) in events {
            let Some(k) = held.update(keysym, pressed) else {
                continue;
            };
            match k {
                Key::Modifier(_) | Key::Silent => {}
                _ if held.any() => held.write_combo(k, &mut out),
                _ => write_key(k, &mut out),
            }
        }
        out
    }

    #[test]
    fn the_table_is_sorted() {
        assert!(NAMED.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn printable_named_and_unknown_keys() {
        assert_eq!(key(0x61), Key::Char('a'));
        assert_eq!(key(0xE9), Key::Char('é'));
        assert_eq!(key(0xFF09), Key::Named("Tab"));
        assert_eq!(key(0xFF08), Key::BackSpace);
        assert_eq!(key(0xFF8D), Key::Enter);
        assert_eq!(key(0xFFB5), Key::Char('5'));
        assert_eq!(key(0x1234), Key::Unknown(0x1234));
        assert_eq!(key(0x0100_0000 | 0x1F), Key::Unknown(0x0100_001F));
        assert_eq!(key(0x0100_0000 | 0x11_0000), Key::Unknown(0x0111_0000));
        assert_eq!(
            log(&[(0x61, true), (0x61, false), (0xFF09, true), (0x1234, true)]),
            "a<Tab><0x1234>"
        );
    }

    #[test]
    fn non_latin_text_from_unicode_keysyms() {
        // Ж, д, 中
        assert_eq!(key(0x0100_0416), Key::Char('Ж'));
        assert_eq!(
            log(&[
                (0x0100_0416, true),
                (0x0100_0434, true),
                (0x0100_4E2D, true)
            ]),
            "Жд中"
        );
    }

    #[test]
    fn modifiers_make_combinations_and_shift_prints_nothing() {
        let ctrl_c = [(0xFFE3, true), (0x63, true), (0x63, false), (0xFFE3, false)];
        assert_eq!(log(&ctrl_c), "<Ctrl+c>");
        let shifted = [(0xFFE1, true), (0x41, true), (0x41, false), (0xFFE1, false)];
        assert_eq!(log(&shifted), "A");
        let three = [
            (0xFFE3, true),
            (0xFFE9, true),
            (0xFFFF, true),
            (0x61, false),
        ];
        assert_eq!(log(&three), "<Ctrl+Alt+Delete>");
        // Released: plain again.
        assert_eq!(log(&[(0xFFE9, true), (0xFFE9, false), (0x62, true)]), "b");
    }
}
