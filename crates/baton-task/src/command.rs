//! Splitting a task's command line into items.
//!
//! `a && b` becomes two items, run in order and cached separately, when `&&` is the only top-level
//! shell operator. An item made only of plain words and quotes runs directly (no shell); anything
//! else (pipes, redirections, `$VAR`, globs, `VAR=x cmd`, `||`, `;`, sub-shells) runs through
//! `sh -c`, so every command a `package.json` script can hold still works.

/// One command item of a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandItem {
    /// A program with arguments, spawned directly.
    Direct {
        /// Program name or path (resolved against PATH at spawn time).
        program: String,
        /// Arguments, unquoted.
        args: Vec<String>,
    },
    /// A shell script run as `sh -c script`.
    Shell {
        /// The script text.
        script: String,
    },
}

impl CommandItem {
    /// The item as display text (the original words for `Direct`).
    pub fn display(&self) -> String {
        match self {
            CommandItem::Direct { program, args } => {
                let mut words = vec![quote(program)];
                words.extend(args.iter().map(|a| quote(a)));
                words.join(" ")
            }
            CommandItem::Shell { script } => script.clone(),
        }
    }

    /// Appends extra arguments given after the task name on the command line.
    pub fn push_args(&mut self, extra: &[String]) {
        match self {
            CommandItem::Direct { args, .. } => args.extend(extra.iter().cloned()),
            CommandItem::Shell { script } => {
                for a in extra {
                    script.push(' ');
                    script.push_str(&quote(a));
                }
            }
        }
    }

    /// Program and arguments to spawn.
    pub fn argv(&self) -> (String, Vec<String>) {
        match self {
            CommandItem::Direct { program, args } => (program.clone(), args.clone()),
            CommandItem::Shell { script } => ("sh".to_owned(), vec!["-c".into(), script.clone()]),
        }
    }
}

fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,^".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Splits a command into items. Errors only on unbalanced quotes.
pub fn parse_command(cmd: &str) -> Result<Vec<CommandItem>, String> {
    let parts = split_top_level_and(cmd)?;
    Ok(match parts {
        Some(parts) => parts.iter().map(|p| parse_item(p)).collect(),
        None => vec![CommandItem::Shell {
            script: cmd.trim().to_owned(),
        }],
    })
}

/// Splits at top-level `&&`. `None` when another top-level operator makes splitting change the
/// meaning (`||`, `;`, `|`, `&`, parentheses, newlines).
fn split_top_level_and(cmd: &str) -> Result<Option<Vec<String>>, String> {
    let chars: Vec<char> = cmd.chars().collect();
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut i = 0;
    let mut splittable = true;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\'' => {
                let end = chars[i + 1..]
                    .iter()
                    .position(|&x| x == '\'')
                    .ok_or("unterminated single quote")?;
                cur.extend(&chars[i..=i + 1 + end]);
                i += end + 2;
                continue;
            }
            '"' => {
                let mut j = i + 1;
                loop {
                    match chars.get(j) {
                        None => return Err("unterminated double quote".into()),
                        Some('\\') => j += 2,
                        Some('"') => break,
                        Some(_) => j += 1,
                    }
                }
                cur.extend(&chars[i..=j]);
                i = j + 1;
                continue;
            }
            '\\' => {
                cur.push(c);
                if let Some(&n) = chars.get(i + 1) {
                    cur.push(n);
                }
                i += 2;
                continue;
            }
            '&' if chars.get(i + 1) == Some(&'&') => {
                parts.push(std::mem::take(&mut cur));
                i += 2;
                continue;
            }
            // `>&2`, `<&0`, `&>file` are redirections, not background jobs.
            '&' if matches!(cur.chars().last(), Some('>' | '<'))
                || chars.get(i + 1) == Some(&'>') => {}
            '&' | '|' | ';' | '(' | ')' | '\n' | '`' => splittable = false,
            '$' if chars.get(i + 1) == Some(&'(') => splittable = false,
            _ => {}
        }
        cur.push(c);
        i += 1;
    }
    parts.push(cur);
    if !splittable || parts.iter().any(|p| p.trim().is_empty()) {
        return Ok(None);
    }
    Ok(Some(
        parts.into_iter().map(|p| p.trim().to_owned()).collect(),
    ))
}

/// Parses one item: `Direct` when it is only words and quotes, else `Shell`.
fn parse_item(item: &str) -> CommandItem {
    match simple_words(item) {
        Some(words) if !words.is_empty() && !words[0].contains('=') => {
            let mut it = words.into_iter();
            let program = it.next().unwrap_or_default();
            CommandItem::Direct {
                program,
                args: it.collect(),
            }
        }
        _ => CommandItem::Shell {
            script: item.to_owned(),
        },
    }
}

/// Words of a command without shell features, or `None` if it has any.
fn simple_words(s: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '\'' => break,
                        ch => cur.push(ch),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '"' => break,
                        '$' | '`' => return None,
                        '\\' => {
                            let n = chars.next()?;
                            if !matches!(n, '"' | '\\' | '$' | '`') {
                                cur.push('\\');
                            }
                            cur.push(n);
                        }
                        ch => cur.push(ch),
                    }
                }
            }
            '\\' => {
                in_word = true;
                cur.push(chars.next()?);
            }
            '~' | '#' if !in_word => return None,
            '|' | '&' | ';' | '<' | '>' | '(' | ')' | '$' | '`' | '*' | '?' | '[' | '{' | '}'
            | '\n' | '!' => return None,
            _ => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Some(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn direct(p: &str, a: &[&str]) -> CommandItem {
        CommandItem::Direct {
            program: p.into(),
            args: a.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn splits_and_chains() {
        assert_eq!(
            parse_command("tsc -p . && node build.js 'a b'").unwrap(),
            vec![
                direct("tsc", &["-p", "."]),
                direct("node", &["build.js", "a b"])
            ]
        );
    }

    #[test]
    fn shell_features_fall_back() {
        assert_eq!(
            parse_command("echo $HOME && ls -l").unwrap(),
            vec![
                CommandItem::Shell {
                    script: "echo $HOME".into()
                },
                direct("ls", &["-l"])
            ]
        );
        assert_eq!(
            parse_command("a && echo x >&2").unwrap(),
            vec![
                direct("a", &[]),
                CommandItem::Shell {
                    script: "echo x >&2".into()
                }
            ]
        );
        // A pipe anywhere keeps the whole line in one shell.
        assert_eq!(
            parse_command("a && ls | wc -l").unwrap(),
            vec![CommandItem::Shell {
                script: "a && ls | wc -l".into()
            }]
        );
        assert_eq!(
            parse_command("a && b || c").unwrap(),
            vec![CommandItem::Shell {
                script: "a && b || c".into()
            }]
        );
        assert_eq!(
            parse_command("FOO=1 node x.js").unwrap(),
            vec![CommandItem::Shell {
                script: "FOO=1 node x.js".into()
            }]
        );
    }

    #[test]
    fn quotes_protect_operators() {
        assert_eq!(
            parse_command("echo 'a && b'").unwrap(),
            vec![direct("echo", &["a && b"])]
        );
        assert_eq!(
            parse_command(r#"echo "x\"y""#).unwrap(),
            vec![direct("echo", &["x\"y"])]
        );
        assert!(parse_command("echo 'oops").is_err());
    }

    #[test]
    fn extra_args_are_quoted_for_shell() {
        let mut s = CommandItem::Shell {
            script: "echo $A".into(),
        };
        s.push_args(&["a b".into()]);
        assert_eq!(s.display(), "echo $A 'a b'");
    }
}
