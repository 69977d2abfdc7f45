//! `session-recorder doctor`: checks a box end to end and explains each finding in plain words.
