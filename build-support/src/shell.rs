//! Quoting for the command lines we write down for a shell to run again: the `command` that
//! made a results.json (`bench-client compare`) and the generated Slurm scripts
//! (`trainer grid emit --slurm`).

/// `word` as one shell word that a POSIX shell reads back as exactly `word`, in argument
/// position: left bare when it holds only characters no shell treats specially (so recorded
/// command lines stay readable), else in single quotes, with each `'` written as `'\''`.
pub fn quote(word: &str) -> String {
    if !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c)) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn plain_words_stay_bare() {
        assert_eq!(quote("target/debug/bench-client"), "target/debug/bench-client");
        assert_eq!(quote("--eps=8/255"), "--eps=8/255");
        assert_eq!(quote("127.0.0.1:50051,gpu@host+1%"), "127.0.0.1:50051,gpu@host+1%");
    }

    #[test]
    fn hostile_words_are_quoted() {
        assert_eq!(quote(""), "''");
        assert_eq!(quote("two words"), "'two words'");
        assert_eq!(quote("it's"), "'it'\\''s'");
        assert_eq!(quote("'"), "''\\'''");
        assert_eq!(quote("$(rm -rf ~)"), "'$(rm -rf ~)'");
        assert_eq!(quote("`id`;x|y&z>w<v"), "'`id`;x|y&z>w<v'");
        assert_eq!(quote("a\nb"), "'a\nb'");
        assert_eq!(quote("*?[a]{b,c}~!#"), "'*?[a]{b,c}~!#'");
        assert_eq!(quote("\"$HOME\"\\"), "'\"$HOME\"\\'");
        assert_eq!(quote("é"), "'é'");
    }

    /// What a real shell reads back is the word itself, for every hostile case above.
    #[test]
    fn the_shell_reads_back_the_word() {
        let words = ["", "two words", "it's", "'", "''", "$(id)", "`id`;x|y&z", "a\nb", "*?~!#", "\"$HOME\"\\", "é", "-n"];
        let script: String = words.iter().map(|w| format!("printf '%s\\0' {}\n", quote(w))).collect();
        let output = std::process::Command::new("sh").arg("-c").arg(&script).output().expect("sh runs");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let read_back: Vec<&[u8]> = output.stdout.split(|&b| b == 0).collect();
        let expected: Vec<&[u8]> = words.iter().map(|w| w.as_bytes()).chain([&b""[..]]).collect();
        assert_eq!(read_back, expected);
    }
}
