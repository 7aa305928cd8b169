//! `tako-server generate-docs DIR`: the man pages and shell completions of the .deb, made
//! from the clap definitions so they cannot say other than `--help` does. The output is
//! committed under packaging/generated/ (the package build has no step to run it), and
//! master/tests/it/generated_docs.rs fails when that copy is stale. Hidden: not an interface.

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;

/// The argument that selects this mode, checked before the command line is parsed.
pub const ARG: &str = "generate-docs";

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("usage: tako-server {ARG} DIR (writes DIR/man/*.1 and DIR/completions/)")]
    Usage,
    #[error("cannot write into {}: {source}", dir.display())]
    Write {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// Writes `dir/man/<page>.1` for the command and every visible subcommand, and
/// `dir/completions/` for bash (`tako-server`), zsh (`_tako-server`) and fish
/// (`tako-server.fish`).
pub fn generate(dir: &Path) -> Result<(), GenerateError> {
    let write_err = |dir: &Path| {
        let dir = dir.to_path_buf();
        move |source| GenerateError::Write { dir, source }
    };
    let man = dir.join("man");
    let completions = dir.join("completions");
    for d in [&man, &completions] {
        std::fs::create_dir_all(d).map_err(write_err(d))?;
    }
    clap_mangen::generate_to(crate::Cli::command(), &man).map_err(write_err(&man))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = crate::Cli::command();
        clap_complete::generate_to(shell, &mut cmd, "tako-server", &completions)
            .map_err(write_err(&completions))?;
    }
    // clap_complete names the bash file after the shell's convention of the day; the
    // package installs it under the command's name, which bash-completion looks up.
    let bash = completions.join("tako-server.bash");
    if bash.exists() {
        std::fs::rename(&bash, completions.join("tako-server")).map_err(write_err(&completions))?;
    }
    Ok(())
}

/// The mode's entry point: `args` are those after `generate-docs`.
pub fn run(args: &[String]) -> i32 {
    let [dir] = args else {
        eprintln!("{}", GenerateError::Usage);
        return 2;
    };
    match generate(Path::new(dir)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}
