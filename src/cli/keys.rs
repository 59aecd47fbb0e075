//! `lifeboat signing-key generate`.

use anyhow::Result;

use super::args::SigningKeyCommand;

pub fn run(cmd: SigningKeyCommand) -> Result<()> {
    match cmd {
        SigningKeyCommand::Generate { out } => {
            let (public, id) = lifeboat::trust::generate(&out)?;
            println!(
                "wrote the secret key {} (0600) and the public key {} (key id {id})",
                out.display(),
                public.display()
            );
            println!(
                "writers sign with the secret key: --signing-key {} or [trust] signing_key; check a manifest with: minisign -V -p {} -m <id>.manifest.json",
                out.display(),
                public.display()
            );
            Ok(())
        }
    }
}
