//! `completions SHELL`: print a shell completion script.

use clap::CommandFactory;

use crate::args::{Cli, CompletionShell};

/// Prints the completion script for `shell` to stdout.
pub fn run(shell: CompletionShell) {
    let shell = match shell {
        CompletionShell::Bash => clap_complete::Shell::Bash,
        CompletionShell::Zsh => clap_complete::Shell::Zsh,
        CompletionShell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(
        shell,
        &mut Cli::command(),
        "chat-cli",
        &mut std::io::stdout(),
    );
}
