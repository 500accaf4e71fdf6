//! The interactive chat: line editing and history on a terminal, incoming messages
//! shown live above the prompt, failover notices, and a clean exit on Ctrl-D/Ctrl-C.
//!
//! On a terminal, input comes from a `rustyline` editor on its own thread and output
//! goes through its external printer, so live messages never garble the line being
//! typed. Without a terminal (scripts, tests), lines are read from stdin and output is
//! printed plainly; the commands are the same.
//!
//! Text from others (messages, usernames, error messages) is shown
//! [`output::sanitize`]d: one message per line, no control characters. A line that is
//! not UTF-8 text is refused with a notice, and the chat goes on.

use std::{
    io::IsTerminal,
    sync::{Arc, Mutex},
};

use chat_proto::v1::{AckMessagesRequest, FetchMessagesRequest};
use rustyline::{DefaultEditor, ExternalPrinter, error::ReadlineError};
use tokio::{
    io::{AsyncBufRead, AsyncBufReadExt, BufReader},
    sync::mpsc,
};

use crate::{
    commands::{accounts, send, watch::describe},
    connect::Session,
    error::{CliError, ErrorKind},
    feed::{self, FeedEvent},
    output::{self, sanitize},
};

const HELP: &str = "commands:
  @NAME TEXT         send TEXT to NAME
  /to NAME           send plain lines to NAME from now on
  /accounts [PAT]    list accounts matching PAT (`*` any run, `?` one character)
  /inbox [N]         show the last N messages you received (default 10)
  /help              this help
  /quit              leave (so do Ctrl-D and Ctrl-C)
#N is a message's number in its recipient's inbox: yours in /inbox and the
live lines, theirs in \"sent to NAME as their #N\".";

/// The notice for a message sent: the recipient's sequence number, the number
/// they see it under (not the global message id).
fn sent_notice(message: &chat_proto::v1::Message) -> String {
    format!(
        "* sent to {} as their #{}",
        sanitize(&message.recipient),
        message.sequence
    )
}

/// What a `/to` without a name is answered.
pub const TO_NEEDS_A_NAME: &str = "/to needs a name: /to NAME";
/// What a `/to` with more than a name is answered (nothing is sent, and plain
/// lines keep their recipient).
pub const TO_TAKES_ONE_NAME: &str = "/to takes one name; to send text use @NAME TEXT";
/// What a line that is not UTF-8 text is answered (nothing is sent).
pub const NOT_UTF8: &str = "that line is not UTF-8 text; nothing was sent";

/// One line of input, as the line reader hands it over.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Input {
    /// A line of text (without its line ending).
    Line(String),
    /// A line that is not UTF-8 text.
    NotUtf8,
    /// Input cannot be read any more: why. The chat ends.
    Failed(String),
}

/// What an input line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action<'a> {
    /// An empty line.
    Nothing,
    Quit,
    Help,
    /// `/to NAME`: plain lines go to NAME from now on.
    To(&'a str),
    /// `/accounts [PATTERN]` (`*` when empty).
    Accounts(&'a str),
    /// `/inbox [N]` (the text after the command, unparsed).
    Inbox(&'a str),
    /// `@NAME TEXT` or `/send NAME TEXT`.
    Send {
        to: &'a str,
        text: &'a str,
    },
    /// A plain line, for the `/to` recipient.
    Plain(&'a str),
}

/// What a (trimmed) input line asks for, or a usage error; a usage error never
/// sends anything.
fn parse_line(line: &str) -> Result<Action<'_>, CliError> {
    let (command, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let rest = rest.trim();
    Ok(match command {
        "" => Action::Nothing,
        "/quit" | "/exit" => Action::Quit,
        "/help" => Action::Help,
        "/to" if rest.is_empty() => return Err(CliError::usage(TO_NEEDS_A_NAME)),
        "/to" if rest.contains(char::is_whitespace) => {
            return Err(CliError::usage(TO_TAKES_ONE_NAME));
        }
        "/to" => Action::To(rest),
        "/accounts" => Action::Accounts(if rest.is_empty() { "*" } else { rest }),
        "/inbox" => Action::Inbox(rest),
        "/send" => match rest.split_once(char::is_whitespace) {
            Some((to, text)) => Action::Send {
                to,
                text: text.trim(),
            },
            None => return Err(CliError::usage("usage: /send NAME TEXT")),
        },
        // A line that starts with `@` is never a plain line.
        command if command.starts_with('@') => {
            if command.len() == 1 || rest.is_empty() {
                return Err(CliError::usage("usage: @NAME TEXT"));
            }
            Action::Send {
                to: &command[1..],
                text: rest,
            }
        }
        command if command.starts_with('/') => {
            return Err(CliError::usage(format!(
                "unknown command {}; /help lists them",
                sanitize(command)
            )));
        }
        _ => Action::Plain(line),
    })
}

/// Where output goes: above the editor's prompt, or plainly to stdout.
#[derive(Clone)]
enum Screen {
    Editor(Arc<Mutex<Box<dyn ExternalPrinter + Send>>>),
    Plain,
}

impl Screen {
    fn show(&self, line: impl Into<String>) {
        let line = line.into();
        match self {
            Screen::Editor(printer) => {
                let mut printer = printer
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if printer.print(format!("{line}\n")).is_err() {
                    println!("{line}");
                }
            }
            Screen::Plain => println!("{line}"),
        }
    }
}

/// Runs the chat until the user leaves.
pub async fn run(session: Session) -> Result<(), CliError> {
    let (lines_tx, mut lines) = mpsc::channel::<Input>(16);
    let screen = if std::io::stdin().is_terminal() {
        start_editor(&session.username, lines_tx)?
    } else {
        tokio::spawn(read_lines(BufReader::new(tokio::io::stdin()), lines_tx));
        Screen::Plain
    };
    screen.show(format!(
        "logged in as {}. Type /help for commands; Ctrl-D leaves.",
        sanitize(&session.username)
    ));

    let (events_tx, mut events) = mpsc::channel(256);
    let mut feed = tokio::spawn(feed::run(session.clone(), 0, events_tx));
    let mut chat = Chat {
        session: session.clone(),
        screen: screen.clone(),
        recipient: None,
        last_received: 0,
    };
    let outcome = loop {
        tokio::select! {
            input = lines.recv() => match input {
                Some(Input::Line(line)) => {
                    if !chat.handle_line(line.trim()).await {
                        break Ok(());
                    }
                }
                Some(Input::NotUtf8) => chat.screen.show(format!("! {NOT_UTF8}")),
                Some(Input::Failed(error)) => {
                    chat.screen.show(format!("! cannot read input: {}", sanitize(&error)));
                    break Ok(());
                }
                None => break Ok(()),
            },
            Some(event) = events.recv() => chat.show_event(event, &mut events).await,
            finished = &mut feed => {
                break match finished {
                    Ok(Err(error)) => Err(error),
                    _ => Err(CliError::new(ErrorKind::Other, "the message feed stopped")),
                };
            }
            _ = tokio::signal::ctrl_c() => break Ok(()),
        }
    };
    feed.abort();
    session.finish().await;
    if outcome.is_ok() {
        screen.show("bye");
    }
    outcome
}

/// State of one interactive chat.
struct Chat {
    session: Session,
    screen: Screen,
    /// Where plain lines go (`/to NAME`).
    recipient: Option<String>,
    /// The highest sequence shown.
    last_received: u64,
}

impl Chat {
    /// Handles one input line; false means "leave".
    async fn handle_line(&mut self, line: &str) -> bool {
        let result = match parse_line(line) {
            Ok(Action::Nothing) => Ok(()),
            Ok(Action::Quit) => return false,
            Ok(Action::Help) => {
                self.screen.show(HELP);
                Ok(())
            }
            Ok(Action::To(name)) => {
                self.screen
                    .show(format!("* plain lines now go to {}", sanitize(name)));
                self.recipient = Some(name.to_owned());
                Ok(())
            }
            Ok(Action::Accounts(pattern)) => self.list_accounts(pattern).await,
            Ok(Action::Inbox(count)) => self.show_history(count).await,
            Ok(Action::Send { to, text }) => self.send(to, text).await,
            Ok(Action::Plain(text)) => match self.recipient.clone() {
                Some(to) => self.send(&to, text).await,
                None => Err(CliError::usage("who to? Use @NAME TEXT, or /to NAME first")),
            },
            Err(error) => Err(error),
        };
        if let Err(error) = result {
            self.screen.show(format!("! {error}"));
        }
        true
    }

    async fn send(&self, to: &str, text: &str) -> Result<(), CliError> {
        let message = send::send(&self.session, to, text).await?;
        self.screen.show(sent_notice(&message));
        Ok(())
    }

    async fn list_accounts(&self, pattern: &str) -> Result<(), CliError> {
        let names = accounts::list(&self.session, pattern).await?;
        if names.is_empty() {
            self.screen
                .show(format!("* no account matches {}", sanitize(pattern)));
        } else {
            let names: Vec<_> = names.iter().map(|name| sanitize(name)).collect();
            self.screen.show(names.join("  "));
        }
        Ok(())
    }

    async fn show_history(&self, count: &str) -> Result<(), CliError> {
        let count: u64 = if count.is_empty() {
            10
        } else {
            count
                .parse()
                .map_err(|_| CliError::usage("usage: /inbox [N]"))?
        };
        let mut client = self.session.client.clone();
        // The newest message is the last one shown here or acknowledged elsewhere.
        let acked = client
            .fetch_messages(self.session.request(FetchMessagesRequest {
                after_sequence: None,
                page_size: 1,
            }))
            .await?
            .into_inner()
            .acked_sequence;
        let newest = self.last_received.max(acked);
        let page = client
            .fetch_messages(self.session.request(FetchMessagesRequest {
                after_sequence: Some(newest.saturating_sub(count)),
                page_size: count.min(500) as u32,
            }))
            .await?
            .into_inner();
        if page.messages.is_empty() {
            self.screen.show("* no messages yet");
        }
        for message in &page.messages {
            self.screen.show(output::message_line(message));
        }
        Ok(())
    }

    /// Shows a feed event and everything queued behind it, then acknowledges what
    /// was shown.
    async fn show_event(&mut self, first: FeedEvent, queue: &mut mpsc::Receiver<FeedEvent>) {
        let mut shown_up_to = None;
        let mut next = Some(first);
        while let Some(event) = next {
            match &event {
                FeedEvent::Message(message) => {
                    self.screen.show(output::message_line(message));
                    self.last_received = message.sequence;
                    shown_up_to = Some(message.sequence);
                }
                FeedEvent::Connected { resumed: false, .. } => {}
                other => self.screen.show(describe(other)),
            }
            next = queue.try_recv().ok();
        }
        if let Some(up_to_sequence) = shown_up_to {
            let _ = self
                .session
                .client
                .clone()
                .ack_messages(self.session.request(AckMessagesRequest { up_to_sequence }))
                .await;
        }
    }
}

/// Starts the line editor on its own thread; lines arrive on `lines`, and the channel
/// closes on Ctrl-D, Ctrl-C or `/quit`.
fn start_editor(username: &str, lines: mpsc::Sender<Input>) -> Result<Screen, CliError> {
    let editor_error =
        |error: ReadlineError| CliError::new(ErrorKind::Other, format!("terminal error: {error}"));
    let mut editor = DefaultEditor::new().map_err(editor_error)?;
    let printer = editor.create_external_printer().map_err(editor_error)?;
    let prompt = format!("{}> ", sanitize(username));
    std::thread::spawn(move || {
        loop {
            match editor.readline(&prompt) {
                Ok(line) => {
                    if !line.trim().is_empty() {
                        let _ = editor.add_history_entry(line.as_str());
                    }
                    let quit = matches!(line.trim(), "/quit" | "/exit");
                    if lines.blocking_send(Input::Line(line)).is_err() || quit {
                        return;
                    }
                }
                // Bytes that are not UTF-8: the line is dropped; say so and go on.
                Err(ReadlineError::Io(error))
                    if error.kind() == std::io::ErrorKind::InvalidData =>
                {
                    if lines.blocking_send(Input::NotUtf8).is_err() {
                        return;
                    }
                }
                // Ctrl-C, Ctrl-D, or a broken terminal: leave.
                Err(_) => return,
            }
        }
    });
    Ok(Screen::Editor(Arc::new(Mutex::new(Box::new(printer)))))
}

/// Reads lines (from a non-terminal stdin) until end of input. A line that is not
/// UTF-8 text is handed over as [`Input::NotUtf8`] and reading goes on; a read
/// error ends the input, handed over as [`Input::Failed`].
async fn read_lines(mut reader: impl AsyncBufRead + Unpin, lines_tx: mpsc::Sender<Input>) {
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        let input = match reader.read_until(b'\n', &mut buffer).await {
            Ok(0) => return,
            Ok(_) => {
                if buffer.last() == Some(&b'\n') {
                    buffer.pop();
                    if buffer.last() == Some(&b'\r') {
                        buffer.pop();
                    }
                }
                match String::from_utf8(std::mem::take(&mut buffer)) {
                    Ok(line) => Input::Line(line),
                    Err(_) => Input::NotUtf8,
                }
            }
            Err(error) => Input::Failed(error.to_string()),
        };
        let failed = matches!(input, Input::Failed(_));
        if lines_tx.send(input).await.is_err() || failed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage_message(line: &str) -> String {
        let error = parse_line(line).expect_err(line);
        assert_eq!(error.kind, ErrorKind::Usage, "{line}");
        error.message
    }

    #[test]
    fn to_without_a_name_or_with_more_than_one_is_a_usage_error() {
        assert_eq!(usage_message("/to"), TO_NEEDS_A_NAME);
        assert_eq!(usage_message("/to bob extra words"), TO_TAKES_ONE_NAME);
        assert_eq!(usage_message("/to bob\tthere"), TO_TAKES_ONE_NAME);
        assert_eq!(parse_line("/to bob").unwrap(), Action::To("bob"));
        assert_eq!(
            parse_line("@bob hi there").unwrap(),
            Action::Send {
                to: "bob",
                text: "hi there"
            }
        );
        assert_eq!(parse_line("hi there").unwrap(), Action::Plain("hi there"));
        assert_eq!(usage_message("@bob"), "usage: @NAME TEXT");
        assert_eq!(usage_message("@ bob hi"), "usage: @NAME TEXT");
        assert_eq!(
            usage_message("/frob\u{1b}[2J"),
            r"unknown command /frob\e[2J; /help lists them"
        );
    }

    #[test]
    fn the_sent_notice_gives_the_recipients_sequence_number_not_the_message_id() {
        let message = chat_proto::v1::Message {
            id: 907,
            sequence: 3,
            sender: "alice".into(),
            recipient: "bob\u{1b}[2J".into(),
            text: "hi".into(),
            sent_at_unix_ms: 0,
        };
        assert_eq!(sent_notice(&message), r"* sent to bob\e[2J as their #3");
        assert!(HELP.contains("#N is a message's number in its recipient's inbox"));
    }

    async fn read_all(input: &[u8]) -> Vec<Input> {
        let (tx, mut rx) = mpsc::channel(64);
        read_lines(input, tx).await;
        let mut lines = Vec::new();
        while let Ok(line) = rx.try_recv() {
            lines.push(line);
        }
        lines
    }

    #[tokio::test]
    async fn a_line_that_is_not_utf8_is_reported_and_reading_goes_on() {
        let lines = read_all(b"first\n\xff\xfe oops\r\n@bob still here\r\nlast").await;
        assert_eq!(
            lines,
            [
                Input::Line("first".into()),
                Input::NotUtf8,
                Input::Line("@bob still here".into()),
                Input::Line("last".into()),
            ]
        );
        assert_eq!(read_all(b"").await, []);
        assert_eq!(read_all(b"\n").await, [Input::Line(String::new())]);
    }
}
