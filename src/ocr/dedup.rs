//! What is already on screen, pure: the words last read at each place, so a line read again
//! (a scroll, a redraw, a window moved back) is not reported twice. No I/O; called by
//! [`super::read_recording`].

use std::collections::HashSet;

use crate::render::Rect;

/// At most this many words are remembered (a full 4K screen of small text is far below).
pub const WORDS_ON_SCREEN_MAX: usize = 20_000;

/// One word read off the screen, in screen pixels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    /// Where it is.
    pub rect: Rect,
    /// What it says.
    pub text: String,
}

/// One line of words, left to right.
pub type Line = Vec<Word>;

/// The words on screen as last read.
#[derive(Debug, Default)]
pub struct OnScreen {
    words: Vec<Word>,
}

impl OnScreen {
    /// An empty screen.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the lines just read in `region`: what was there before is forgotten, the new
    /// lines are remembered, and the lines that hold a word not anywhere on screen before are
    /// returned (as text, words joined by spaces). A line all of whose words were already on
    /// screen (at any place) is not news.
    pub fn read(&mut self, region: Rect, lines: Vec<Line>) -> Vec<String> {
        let known: HashSet<String> = self.words.iter().map(|w| fold(&w.text)).collect();
        self.words.retain(|w| w.rect.intersect(&region).is_empty());
        let mut news = Vec::new();
        for line in lines {
            let is_news = line.iter().any(|w| {
                let f = fold(&w.text);
                !f.is_empty() && !known.contains(&f)
            });
            if is_news {
                let text: Vec<&str> = line.iter().map(|w| w.text.as_str()).collect();
                news.push(text.join(" "));
            }
            if self.words.len() + line.len() <= WORDS_ON_SCREEN_MAX {
                self.words.extend(line);
            }
        }
        news
    }
}

/// A word as compared: lower case, glyphs OCR confuses folded (`1`/`l`/`I` to `l`, `0`/`O` to
/// `o`), punctuation around it dropped.
pub fn fold(word: &str) -> String {
    word.trim_matches(|c: char| !c.is_alphanumeric())
        .chars()
        .flat_map(char::to_lowercase)
        .map(|c| match c {
            '1' | 'i' | '|' => 'l',
            '0' => 'o',
            c => c,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(y: i64, words: &[&str]) -> Line {
        words
            .iter()
            .enumerate()
            .map(|(i, t)| Word {
                rect: Rect::new(i as i64 * 60, y, 50, 16),
                text: (*t).to_owned(),
            })
            .collect()
    }

    #[test]
    fn new_lines_are_news_and_the_same_lines_read_again_are_not() {
        let mut s = OnScreen::new();
        let region = Rect::new(0, 0, 800, 40);
        let got = s.read(
            region,
            vec![line(0, &["ls", "-la"]), line(20, &["total", "42"])],
        );
        assert_eq!(got, vec!["ls -la".to_owned(), "total 42".to_owned()]);
        let again = s.read(
            region,
            vec![line(0, &["ls", "-la"]), line(20, &["total", "42"])],
        );
        assert!(again.is_empty(), "{again:?}");
    }

    #[test]
    fn a_scrolled_line_is_not_news_but_the_new_bottom_line_is() {
        let mut s = OnScreen::new();
        s.read(
            Rect::new(0, 0, 800, 40),
            vec![line(0, &["alpha", "beta"]), line(20, &["gamma"])],
        );
        let got = s.read(
            Rect::new(0, 0, 800, 60),
            vec![
                line(0, &["gamma"]),
                line(20, &["delta", "epsilon"]),
                line(40, &["beta", "gamma"]),
            ],
        );
        assert_eq!(got, vec!["delta epsilon".to_owned()]);
    }

    #[test]
    fn a_word_overwritten_and_shown_again_later_is_news_again() {
        let mut s = OnScreen::new();
        let region = Rect::new(0, 0, 800, 20);
        s.read(region, vec![line(0, &["findme"])]);
        s.read(region, vec![line(0, &["other"])]);
        let got = s.read(region, vec![line(0, &["findme"])]);
        assert_eq!(got, vec!["findme".to_owned()]);
    }

    #[test]
    fn words_elsewhere_on_screen_stay_known() {
        let mut s = OnScreen::new();
        s.read(Rect::new(0, 0, 800, 20), vec![line(0, &["passwd"])]);
        let got = s.read(Rect::new(0, 100, 800, 20), vec![line(100, &["passwd"])]);
        assert!(got.is_empty(), "{got:?}");
    }

    #[test]
    fn folding_matches_what_ocr_confuses() {
        assert_eq!(fold("libxmlsec1"), fold("libxmlsecl"));
        assert_eq!(fold("IO0"), fold("loo"));
        assert_eq!(fold("(Hello),"), "hello");
        assert_eq!(fold("--"), "");
    }
}
