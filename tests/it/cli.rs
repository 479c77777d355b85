//! The command line every bridge gets: clear errors and exit codes.

use mxbridge::cli::{Cli, Command, run_cli};

use crate::common::{Recorder, config_yaml};

fn code(c: std::process::ExitCode) -> String {
    format!("{c:?}")
}

#[tokio::test]
async fn missing_config_is_exit_2_and_unreachable_homeserver_is_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    let cli = |command| Cli { config: config.clone(), registration: None, command: Some(command) };
    assert_eq!(code(run_cli::<Recorder>(cli(Command::CheckConfig)).await), code(2.into()));

    // A config whose homeserver does not listen: generate-registration works, check-config fails.
    let db = format!("sqlite://{}/db.sqlite", dir.path().display());
    let yaml = config_yaml("http://127.0.0.1:1", 29999, &db, "{}").replace(
        "appservice:\n",
        &format!("appservice:\n  registration: '{}/reg.yaml'\n", dir.path().display()),
    );
    std::fs::write(&config, yaml).unwrap();
    let generate =
        |double_puppet| cli(Command::GenerateRegistration { new_tokens: false, double_puppet });
    assert_eq!(code(run_cli::<Recorder>(generate(false)).await), code(0.into()));
    assert!(!dir.path().join("doublepuppet.yaml").exists(), "written only when asked for");
    let reg = std::fs::read_to_string(dir.path().join("reg.yaml")).unwrap();
    assert!(reg.contains("@_t_.*:localhost"), "{reg}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("reg.yaml")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the registration holds both tokens");
    }
    // Regenerating keeps the tokens; the double-puppet registration is written beside it:
    // every user of the server, not exclusive, and nothing pushed to it.
    assert_eq!(code(run_cli::<Recorder>(generate(true)).await), code(0.into()));
    assert_eq!(std::fs::read_to_string(dir.path().join("reg.yaml")).unwrap(), reg);
    let puppet = mxbridge::Registration::load(dir.path().join("doublepuppet.yaml")).unwrap();
    let users = &puppet.file().namespaces.users;
    assert_eq!(users.len(), 1);
    assert!(!users[0].exclusive && users[0].regex == "@.*:localhost", "{users:?}");
    assert_eq!(puppet.file().url, None);
    assert_ne!(
        puppet.as_token().expose(),
        mxbridge::Registration::load(dir.path().join("reg.yaml")).unwrap().as_token().expose()
    );
    assert!(puppet.is_user_in_namespace(ruma::user_id!("@anyone:localhost")));
    // Its tokens are kept too.
    assert_eq!(code(run_cli::<Recorder>(generate(true)).await), code(0.into()));
    let again = mxbridge::Registration::load(dir.path().join("doublepuppet.yaml")).unwrap();
    assert_eq!(again.as_token().expose(), puppet.as_token().expose());
    assert_eq!(code(run_cli::<Recorder>(cli(Command::CheckConfig)).await), code(1.into()));
}
