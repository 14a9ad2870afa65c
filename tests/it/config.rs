//! Configuration errors name the key and the reason (never a secret value);
//! env overrides work; the `check-config` and `plugins` commands.

use crate::support::{Sandbox, Server, built_plugin, run_iapd};

fn check(config: &std::path::Path, envs: &[(&str, &str)]) -> (bool, String, String) {
    run_iapd(&["--config", &config.display().to_string(), "check-config"], envs)
}

/// A well-formed key hash, for the cases where another key is wrong.
const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

#[test]
fn configuration_errors_name_the_key_and_the_reason() {
    let sandbox = Sandbox::new();
    sandbox.add_plugin(&built_plugin("iapd-plugin-sandbox"), "libiapd_plugin_sandbox.so");
    sandbox.add_plugin(&built_plugin("iapd-plugin-google-play"), "libiapd_plugin_google_play.so");
    // (config body after [plugins], expected key, expected reason fragment)
    let cases = [
        (
            "[server]\nlisten_addr = \"x\"\n[stores.sandbox]\nplugin = \"iapd_plugin_sandbox\"\n",
            "server.listen_addr",
            "unknown field",
        ),
        (
            "[server]\nlisten = \"not an address\"\n[stores.sandbox]\nplugin = \"iapd_plugin_sandbox\"\n",
            "server.listen",
            "invalid",
        ),
        ("[stores.sandbox]\nplugin = \"iapd_plugin_sandbox\"\ncolour = 1\n", "stores.sandbox.colour", "unknown field"),
        ("[stores.google]\nplugin = \"iapd_plugin_google\"\n", "stores.google.plugin", "libiapd_plugin_google.so"),
        (
            "[stores.sandbox]\nplugin = \"../outside.so\"\n",
            "stores.sandbox.plugin",
            "must be a file name inside the plugins folder",
        ),
        ("[stores.Sandbox]\nplugin = \"iapd_plugin_sandbox\"\n", "stores.Sandbox", "a store id is"),
        (
            "[stores.sandbox]\nplugin = \"iapd_plugin_sandbox\"\nallowed_origins = [\"https://ok.example\", \"ftp://x\"]\n",
            "stores.sandbox.allowed_origins[1]",
            "only http and https",
        ),
        (
            "[stores.sandbox]\nplugin = \"iapd_plugin_sandbox\"\nsecrets = { key = { env = \"IAPD_TEST_UNSET_VARIABLE\" } }\n",
            "stores.sandbox.secrets.key",
            "`IAPD_TEST_UNSET_VARIABLE` is not set",
        ),
        (
            "[stores.sandbox]\nplugin = \"iapd_plugin_sandbox\"\nconfig = { typo = 1 }\n",
            "stores.sandbox.config.typo",
            "unknown field `typo`",
        ),
        (
            "[stores.gp]\nplugin = \"iapd_plugin_google_play\"\nconfig = { packages = [\"a\"], retry = { max_attempts = \"x\" } }\n",
            "stores.gp.config.retry.max_attempts",
            "invalid type: string \"x\", expected usize",
        ),
        ("", "stores", "no store is configured"),
        (
            "[stores.sandbox]\nplugin = \"iapd_plugin_sandbox\"\n[tenants.a]\napps = [\"x\"]\n[tenants.b]\napps = [\"y\", \"x\"]\n",
            "tenants.b.apps",
            "app `x` is also tenant `a`'s",
        ),
        (
            "[stores.sandbox]\nplugin = \"iapd_plugin_sandbox\"\n[tenants.a]\napps = [\"x\"]\n[tenants.a.keys.k]\nsha256 = \"abc\"\n",
            "tenants.a.keys.k.sha256",
            "64 hex digits",
        ),
        (
            &format!(
                "[stores.sandbox]\nplugin = \"iapd_plugin_sandbox\"\n[tenants.a]\napps = [\"x\"]\n[tenants.a.keys.k]\nsha256 = \"{HASH}\"\nstores = [\"gp\"]\n"
            ),
            "tenants.a.keys.k.stores",
            "`gp` is not a configured store",
        ),
        (
            &format!(
                "[stores.sandbox]\nplugin = \"iapd_plugin_sandbox\"\n[tenants.a]\napps = [\"x\"]\n[tenants.a.keys.k]\nsha256 = \"{HASH}\"\nrpcs = [\"Verfiy\"]\n"
            ),
            "tenants.a.keys.k.rpcs",
            "`Verfiy` is not an RPC of iapd.v1.PurchaseService",
        ),
        (
            &format!(
                "[stores.sandbox]\nplugin = \"iapd_plugin_sandbox\"\n[tenants.a]\napps = [\"x\"]\n[tenants.a.keys.k]\nsha256 = \"{HASH}\"\napps = [\"y\"]\n"
            ),
            "tenants.a.keys.k.apps",
            "`y` is not one of the tenant's apps",
        ),
        (
            &format!(
                "[stores.sandbox]\nplugin = \"iapd_plugin_sandbox\"\n[tenants.a]\napps = [\"x\"]\n[tenants.a.keys.k]\nsha256 = \"{HASH}\"\n[tenants.a.keys.l]\nsha256 = \"{HASH}\"\n"
            ),
            "tenants.a.keys.l.sha256",
            "is also `tenants.a.keys.k`'s",
        ),
        (
            "[auth]\nmode = \"keys\"\n[stores.sandbox]\nplugin = \"iapd_plugin_sandbox\"\n",
            "auth.mode",
            "no tenant is configured",
        ),
        (
            "[server]\nlisten = \"0.0.0.0:50051\"\n[stores.sandbox]\nplugin = \"iapd_plugin_sandbox\"\n",
            "auth.mode",
            "not a loopback address",
        ),
        (
            "[server.tls]\ncert_file = \"/nonexistent/server.pem\"\nkey_file = \"/nonexistent/server.key\"\n[stores.sandbox]\nplugin = \"iapd_plugin_sandbox\"\n",
            "server.tls.cert_file",
            "cannot read certificates from `/nonexistent/server.pem`",
        ),
    ];
    for (body, key, reason) in cases {
        let config = sandbox.write_config(body);
        let (ok, _, stderr) = check(&config, &[]);
        assert!(!ok, "accepted:\n{body}");
        assert!(
            stderr.contains(&format!("config key `{key}`")) || stderr.contains(&format!("store `{key}")),
            "key `{key}` not named:\n{stderr}"
        );
        assert!(stderr.contains(reason), "reason `{reason}` missing:\n{stderr}");
        // A position in the JSON the plugin received means nothing to the operator.
        assert!(!stderr.contains(" column "), "a position in the plugin's JSON:\n{stderr}");
    }
}

#[test]
fn environment_overrides_the_file() {
    let (ok, stdout, stderr) = run_iapd(&["check-config"], &[("IAPD_SERVER__LISTEN", "127.0.0.1:6000")]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("listening on 127.0.0.1:6000"), "{stdout}");
    let (ok, _, stderr) = run_iapd(&["check-config"], &[("IAPD_SERVER__LISTEN", "nonsense")]);
    assert!(!ok);
    assert!(stderr.contains("config key `server.listen`"), "{stderr}");
}

#[test]
fn check_config_accepts_the_embedded_defaults() {
    let (ok, stdout, stderr) = run_iapd(&["check-config"], &[]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("store `sandbox`: ok (sandbox 0.1.0)"), "{stdout}");
}

#[test]
fn plugins_says_where_calls_run() {
    let sandbox = Sandbox::new();
    sandbox.add_plugin(&built_plugin("iapd-plugin-sandbox"), "libsandbox.so");
    sandbox.compile_c_plugin("echo_store.c", "libecho_c.so");
    let config = sandbox.write_config(
        "[stores.threads]\nplugin = \"libsandbox.so\"\n\n[stores.echo]\nplugin = \"libecho_c.so\"\ninline_calls = true\n",
    );
    let config = config.to_str().unwrap();
    let (_, stdout, _) = run_iapd(&["--config", config, "plugins"], &[]);
    assert!(
        stdout.contains(
            "calls:        on plugin threads (the plugin declares a non-blocking call; `inline_calls` is off)"
        ),
        "{stdout}"
    );
    // `check-config` starts each store, so it refuses what `serve` would.
    let (ok, _, stderr) = run_iapd(&["--config", config, "check-config"], &[]);
    assert!(!ok);
    assert!(
        stderr.contains("`stores.echo.inline_calls` is true, but the plugin does not declare a non-blocking call"),
        "{stderr}"
    );
}

#[test]
fn plugins_lists_abi_capabilities_and_path() {
    let (ok, stdout, stderr) = run_iapd(&["plugins"], &[]);
    assert!(ok, "{stderr}");
    for expected in [
        "sandbox",
        "abi:          1.1",
        "verify, acknowledge, consume, list_items",
        "libiapd_plugin_sandbox",
        // The embedded defaults run the sandbox's calls inline.
        "calls:        inline, on the server's threads (the plugin declares a non-blocking call)",
    ] {
        assert!(stdout.contains(expected), "`{expected}` missing:\n{stdout}");
    }
}

#[test]
fn config_errors_never_echo_a_secret_value() {
    const SECRET: &str = "S3CRET-5b1e9d";
    let sandbox = Sandbox::new();
    sandbox.add_plugin(&built_plugin("iapd-plugin-sandbox"), "libiapd_plugin_sandbox.so");
    let store = "[stores.sandbox]\nplugin = \"iapd_plugin_sandbox\"\n";
    // (config body after the store, environment, the key the error names)
    let cases = [
        (format!("[stores.sandbox.secrets]\nkey = \"{SECRET}\"\n"), vec![], "stores.sandbox.secrets.key"),
        (format!("secrets = \"{SECRET}\"\n"), vec![], "stores.sandbox.secrets"),
        (format!("secrets = {{ key = {{ value = [\"{SECRET}\"] }} }}\n"), vec![], "stores.sandbox.secrets.key.value"),
        ("secrets = { key = { value = 5318008 } }\n".to_owned(), vec![], "stores.sandbox.secrets.key.value"),
        (String::new(), vec![("IAPD_STORES__SANDBOX__SECRETS__KEY", SECRET)], "stores.sandbox.secrets.key"),
        (String::new(), vec![("IAPD_STORES__SANDBOX__SECRETS", SECRET)], "stores.sandbox.secrets"),
        (
            String::new(),
            vec![("IAPD_STORES__SANDBOX__SECRETS__KEY__VALUE", "5318008")],
            "stores.sandbox.secrets.key.value",
        ),
    ];
    for (body, envs, key) in &cases {
        let config = sandbox.write_config(&format!("{store}{body}"));
        let (ok, _, stderr) = check(&config, envs);
        assert!(!ok, "accepted:\n{body}{envs:?}");
        assert!(stderr.contains(&format!("config key `{key}`")), "key `{key}` not named:\n{stderr}");
        assert!(!stderr.contains(SECRET) && !stderr.contains("5318008"), "the value leaked:\n{stderr}");
    }
    // A syntax error on a secret's line: the position, never the line.
    let config = sandbox.write_config(&format!("{store}[stores.sandbox.secrets]\nkey = {{ value = \"{SECRET} }}\n"));
    let (ok, _, stderr) = check(&config, &[]);
    assert!(!ok);
    assert!(stderr.contains("line 7, column"), "no position:\n{stderr}");
    assert!(!stderr.contains(SECRET), "the value leaked:\n{stderr}");
}

#[test]
fn a_secret_has_exactly_one_source() {
    let sandbox = Sandbox::new();
    sandbox.add_plugin(&built_plugin("iapd-plugin-sandbox"), "libiapd_plugin_sandbox.so");
    let store = "[stores.sandbox]\nplugin = \"iapd_plugin_sandbox\"\n";
    let cases = [
        ("secrets = { key = { value = \"a\", env = \"HOME\" } }\n", vec![]),
        ("secrets = { key = { file = \"/etc/hostname\", env = \"HOME\" } }\n", vec![]),
        // The file's source and the environment's are merged into one table.
        ("secrets = { key = { value = \"a\" } }\n", vec![("IAPD_STORES__SANDBOX__SECRETS__KEY__ENV", "HOME")]),
    ];
    for (body, envs) in &cases {
        let config = sandbox.write_config(&format!("{store}{body}"));
        let (ok, _, stderr) = check(&config, envs);
        assert!(!ok, "accepted:\n{body}{envs:?}");
        assert!(stderr.contains("config key `stores.sandbox.secrets.key`"), "key not named:\n{stderr}");
        assert!(stderr.contains("give exactly one of `env`, `file` or `value`"), "{stderr}");
    }
}

#[test]
fn secrets_the_plugin_does_not_declare_are_refused() {
    let sandbox = Sandbox::new();
    sandbox.add_plugin(&built_plugin("iapd-plugin-sandbox"), "libiapd_plugin_sandbox.so");
    sandbox.add_plugin(&built_plugin("iapd-plugin-google-play"), "libiapd_plugin_google_play.so");
    let cases = [
        (
            "[stores.sandbox]\nplugin = \"iapd_plugin_sandbox\"\nsecrets = { key = { value = \"x\" } }\n",
            "config key `stores.sandbox.secrets.key`",
            "the plugin declares no secrets",
        ),
        (
            "[stores.gp]\nplugin = \"iapd_plugin_google_play\"\nsecrets = { service_acount = { value = \"{}\" } }\n",
            "config key `stores.gp.secrets.service_acount`",
            "the plugin declares only `service_account`",
        ),
    ];
    for (body, key, reason) in cases {
        let config = sandbox.write_config(body);
        let (ok, _, stderr) = check(&config, &[]);
        assert!(!ok, "accepted:\n{body}");
        assert!(stderr.contains(key) && stderr.contains(reason), "`{key}`: {reason}` missing:\n{stderr}");
        // `serve` refuses it the same way.
        let logs = Server::try_start(Some(&config), &[]).err().expect("serve accepted an undeclared secret");
        assert!(logs.contains(key) && logs.contains(reason), "{logs}");
    }
}

#[test]
fn config_errors_name_the_file_or_the_environment() {
    let sandbox = Sandbox::new();
    let config = sandbox.write_config("[stores.sandbox]\nplugin = \"iapd_plugin_sandbox\"\nmax_in_flight = \"many\"\n");
    let (ok, _, stderr) = check(&config, &[]);
    assert!(!ok);
    assert!(stderr.contains("config key `stores.sandbox.max_in_flight`"), "{stderr}");
    assert!(stderr.contains(&format!("(in `{}`)", config.display())), "the file is not named:\n{stderr}");
    let (ok, _, stderr) = check(&config, &[("IAPD_STORES__SANDBOX__MAX_IN_FLIGHT", "[1]")]);
    assert!(!ok);
    assert!(stderr.contains("(from `IAPD_` environment variable(s))"), "the environment is not named:\n{stderr}");
}

#[test]
fn an_invalid_log_filter_is_refused() {
    for filter in ["iapd=loud", "=["] {
        let (ok, _, stderr) = run_iapd(&["check-config"], &[("IAPD_LOG", filter)]);
        assert!(!ok, "IAPD_LOG `{filter}` accepted");
        assert!(stderr.contains(&format!("IAPD_LOG `{filter}` is not a log filter")), "{stderr}");
        let logs = Server::try_start(None, &[("IAPD_LOG", filter)]).err().expect("serve accepted a bad IAPD_LOG");
        assert!(logs.contains("IAPD_LOG"), "{logs}");
    }
    let (ok, _, stderr) = run_iapd(&["check-config"], &[("IAPD_LOG", "warn,iapd=debug")]);
    assert!(ok, "a valid filter refused:\n{stderr}");
}

#[test]
fn world_writable_plugin_files_and_folders_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let sandbox = Sandbox::new();
    let plugin = sandbox.plugins_dir().join("libsandbox.so");
    // A copy, not a link: the modes set below must not reach the built library.
    std::fs::copy(built_plugin("iapd-plugin-sandbox"), &plugin).unwrap();
    let config = sandbox.write_config("[stores.sandbox]\nplugin = \"libsandbox.so\"\n");
    let config = config.to_str().unwrap();
    let set_mode = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    let (plugin, folder) = (plugin.canonicalize().unwrap(), sandbox.plugins_dir().canonicalize().unwrap());
    set_mode(&plugin, 0o755);
    set_mode(&folder, 0o755);
    let (ok, stdout, stderr) = run_iapd(&["--config", config, "plugins"], &[]);
    assert!(ok, "refused with safe modes:\n{stdout}{stderr}");

    let cases = [
        (&plugin, 0o666, format!("plugin `{}`: the file is writable by every user (mode 0666)", plugin.display())),
        (
            &folder,
            0o777,
            format!(
                "plugin `{}`: its folder `{}` is writable by every user (mode 0777)",
                plugin.display(),
                folder.display()
            ),
        ),
    ];
    for (path, mode, expected) in cases {
        set_mode(path, mode);
        let (ok, stdout, _) = run_iapd(&["--config", config, "plugins"], &[]);
        assert!(!ok && stdout.contains(&format!("refused: {expected}")), "`{expected}` missing:\n{stdout}");
        let (ok, _, stderr) = run_iapd(&["--config", config, "check-config"], &[]);
        assert!(!ok && stderr.contains(&expected), "`{expected}` missing:\n{stderr}");
        set_mode(path, 0o755);
    }
}
