//! The interactive chat: line editing and history on a terminal, incoming messages
//! shown live above the prompt, failover notices, and a clean exit on Ctrl-D/Ctrl-C.
//!
//! On a terminal, input comes from a `rustyline` editor on its own thread and output
//! goes through its external printer, so live messages never garble the line being
//! typed. Without a terminal (scripts, tests), lines are read from stdin and output is
//! printed plainly; the commands are the same.

use std::{
    io::IsTerminal,
    sync::{Arc, Mutex},
};

use chat_proto::v1::{AckMessagesRequest, FetchMessagesRequest, LogoutRequest};
use rustyline::{DefaultEditor, ExternalPrinter, error::ReadlineError};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    sync::mpsc,
};

use crate::{
    commands::{accounts, send, watch::describe},
    connect::Session,
    error::{CliError, ErrorKind},
    feed::{self, FeedEvent},
    output,
};

const HELP: &str = "commands:
  @NAME TEXT         send TEXT to NAME
  /to NAME           send plain lines to NAME from now on
  /accounts [PAT]    list accounts matching PAT (`*` any run, `?` one character)
  /inbox [N]         show the last N messages you received (default 10)
  /help              this help
  /quit              leave (so do Ctrl-D and Ctrl-C)";

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
    let (lines_tx, mut lines) = mpsc::channel::<String>(16);
    let screen = if std::io::stdin().is_terminal() {
        start_editor(&session.username, lines_tx)?
    } else {
        tokio::spawn(read_plain_lines(lines_tx));
        Screen::Plain
    };
    screen.show(format!(
        "logged in as {}. Type /help for commands; Ctrl-D leaves.",
        session.username
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
            line = lines.recv() => match line {
                Some(line) => {
                    if !chat.handle_line(line.trim()).await {
                        break Ok(());
                    }
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
    // End the session; best effort, bounded by the balancer's timeout.
    let _ = session
        .client
        .clone()
        .logout(session.request(LogoutRequest {}))
        .await;
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
        let (command, rest) = line.split_once(' ').unwrap_or((line, ""));
        let rest = rest.trim();
        let result = match command {
            "" => Ok(()),
            "/quit" | "/exit" => return false,
            "/help" => {
                self.screen.show(HELP);
                Ok(())
            }
            "/to" if !rest.is_empty() => {
                self.recipient = Some(rest.to_owned());
                self.screen.show(format!("* plain lines now go to {rest}"));
                Ok(())
            }
            "/accounts" => {
                self.list_accounts(if rest.is_empty() { "*" } else { rest })
                    .await
            }
            "/inbox" => self.show_history(rest).await,
            "/send" => match rest.split_once(' ') {
                Some((to, text)) => self.send(to, text.trim()).await,
                None => Err(CliError::usage("usage: /send NAME TEXT")),
            },
            command if command.starts_with('@') && command.len() > 1 => {
                if rest.is_empty() {
                    Err(CliError::usage("usage: @NAME TEXT"))
                } else {
                    self.send(&command[1..], rest).await
                }
            }
            command if command.starts_with('/') => Err(CliError::usage(format!(
                "unknown command {command}; /help lists them"
            ))),
            _ => match self.recipient.clone() {
                Some(to) => self.send(&to, line).await,
                None => Err(CliError::usage("who to? Use @NAME TEXT, or /to NAME first")),
            },
        };
        if let Err(error) = result {
            self.screen.show(format!("! {error}"));
        }
        true
    }

    async fn send(&self, to: &str, text: &str) -> Result<(), CliError> {
        let message = send::send(&self.session, to, text).await?;
        self.screen
            .show(format!("* sent to {} (#{})", message.recipient, message.id));
        Ok(())
    }

    async fn list_accounts(&self, pattern: &str) -> Result<(), CliError> {
        let names = accounts::list(&self.session, pattern).await?;
        if names.is_empty() {
            self.screen.show(format!("* no account matches {pattern}"));
        } else {
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
fn start_editor(username: &str, lines: mpsc::Sender<String>) -> Result<Screen, CliError> {
    let editor_error =
        |error: ReadlineError| CliError::new(ErrorKind::Other, format!("terminal error: {error}"));
    let mut editor = DefaultEditor::new().map_err(editor_error)?;
    let printer = editor.create_external_printer().map_err(editor_error)?;
    let prompt = format!("{username}> ");
    std::thread::spawn(move || {
        loop {
            match editor.readline(&prompt) {
                Ok(line) => {
                    if !line.trim().is_empty() {
                        let _ = editor.add_history_entry(line.as_str());
                    }
                    let quit = matches!(line.trim(), "/quit" | "/exit");
                    if lines.blocking_send(line).is_err() || quit {
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

/// Reads lines from a non-terminal stdin until end of input.
async fn read_plain_lines(lines_tx: mpsc::Sender<String>) {
    let mut input = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = input.next_line().await {
        if lines_tx.send(line).await.is_err() {
            return;
        }
    }
}
