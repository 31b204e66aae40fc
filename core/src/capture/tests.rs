//! Table tests of `init`'s decisions: the restore scripts, argument
//! validation, the variant and IPv6 choices. None needs root; the netns test
//! that applies the scripts is `proxy/tests/init_netns.rs`.

// A panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use clap::{CommandFactory, Parser};

use super::apply::{self, Choice, Variant};
use super::rules::{differences, removal, rules, Family};
use super::*;

/// The CLI shape `main.rs` uses: `trellis-proxy init [ARGS]`.
#[derive(Parser, Debug)]
#[command(name = "init")]
struct InitCli {
    #[command(flatten)]
    args: InitArgs,
}

fn parse(flags: &[&str]) -> InitArgs {
    let argv = std::iter::once("init").chain(flags.iter().copied());
    InitCli::try_parse_from(argv).unwrap().args
}

fn plan(flags: &[&str]) -> Plan {
    Plan::from_args(&parse(flags)).unwrap()
}

fn problems(flags: &[&str]) -> Vec<String> {
    match Plan::from_args(&parse(flags)) {
        Err(InitError::InvalidArgs(problems)) => problems,
        other => panic!("expected invalid arguments for {flags:?}, got {other:?}"),
    }
}

/// The lines of `script` that add rules (`-A`/`-I`).
fn rule_lines(script: &str) -> Vec<&str> {
    script
        .lines()
        .filter(|l| l.starts_with("-A ") || l.starts_with("-I "))
        .collect()
}

/// What `iptables-save -t nat` shows after `script` ran on a fresh table:
/// the chains it declared and its rules, each appended.
fn saved_after(script: &str) -> String {
    let mut out = String::from("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n");
    for line in script.lines() {
        if line.starts_with(':') {
            out.push_str(line);
            out.push('\n');
        } else if let Some(rest) = line.strip_prefix("-I ") {
            let (chain, rest) = rest.split_once(" 1 ").unwrap();
            out.push_str(&format!("-A {chain} {rest}\n"));
        } else if line.starts_with("-A ") {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str("COMMIT\n");
    out
}

const DEFAULT_V4: &str = r#"*nat
:TRELLIS_INBOUND - [0:0]
:TRELLIS_INBOUND_REDIRECT - [0:0]
:TRELLIS_OUTBOUND - [0:0]
:TRELLIS_OUTBOUND_REDIRECT - [0:0]
-A TRELLIS_INBOUND -p tcp --dport 7191 -m comment --comment "trellis/inbound: skip the proxy admin port 7191" -j RETURN
-A TRELLIS_INBOUND -p tcp -m comment --comment "trellis/inbound: redirect all other TCP to the proxy" -j TRELLIS_INBOUND_REDIRECT
-A TRELLIS_INBOUND_REDIRECT -p tcp -m comment --comment "trellis/inbound: redirect to the proxy inbound port 7143" -j REDIRECT --to-ports 7143
-A TRELLIS_OUTBOUND -m owner --uid-owner 7102 -m comment --comment "trellis/outbound: skip traffic of the proxy user (uid 7102)" -j RETURN
-A TRELLIS_OUTBOUND -o lo -m comment --comment "trellis/outbound: skip traffic leaving through loopback" -j RETURN
-A TRELLIS_OUTBOUND -d 127.0.0.0/8 -m comment --comment "trellis/outbound: skip loopback destinations 127.0.0.0/8" -j RETURN
-A TRELLIS_OUTBOUND -p tcp -m comment --comment "trellis/outbound: redirect all other TCP to the proxy" -j TRELLIS_OUTBOUND_REDIRECT
-A TRELLIS_OUTBOUND_REDIRECT -p tcp -m comment --comment "trellis/outbound: redirect to the proxy outbound port 7140" -j REDIRECT --to-ports 7140
-I PREROUTING 1 -p tcp -m comment --comment "trellis/inbound: capture TCP connections to the pod" -j TRELLIS_INBOUND
-I OUTPUT 1 -p tcp -m comment --comment "trellis/outbound: capture TCP connections from the pod" -j TRELLIS_OUTBOUND
COMMIT
"#;

// ---- the scripts ----

#[test]
fn defaults_give_the_documented_script() {
    assert_eq!(rules(&plan(&[]), Family::V4, ""), DEFAULT_V4);
}

#[test]
fn every_rule_says_what_it_does() {
    let plan = plan(&[
        "--skip-inbound-ports",
        "22,80-90",
        "--skip-outbound-ports",
        "25",
    ]);
    for family in [Family::V4, Family::V6] {
        let script = rules(&plan, family, "");
        for line in rule_lines(&script) {
            assert!(
                line.contains(r#"-m comment --comment "trellis/"#),
                "no trellis comment: {line}"
            );
            let comment = line.split('"').nth(1).unwrap();
            assert!(
                !comment.contains(['\'', '\\']),
                "iptables-save would escape: {comment}"
            );
        }
    }
}

#[test]
fn ports_come_from_the_flags() {
    let plan = plan(&[
        "--inbound-port",
        "8001",
        "--outbound-port",
        "8002",
        "--admin-port",
        "8003",
    ]);
    let script = rules(&plan, Family::V4, "");
    assert!(
        script.contains("-A TRELLIS_INBOUND -p tcp --dport 8003 "),
        "{script}"
    );
    assert!(script.contains("-j REDIRECT --to-ports 8001\n"), "{script}");
    assert!(script.contains("-j REDIRECT --to-ports 8002\n"), "{script}");
    assert!(
        !script.contains("7143") && !script.contains("7140") && !script.contains("7191"),
        "{script}"
    );
}

#[test]
fn skip_ports_single_and_ranges() {
    let cases: &[(&str, &str, &str)] = &[
        // (flag value, expected matcher, comment ports)
        ("22", "-p tcp --dport 22 ", "22"),
        ("4000-4010", "-p tcp --dport 4000:4010 ", "4000-4010"),
        (
            "25, 443,4000-4010",
            "-p tcp -m multiport --dports 25,443,4000:4010 ",
            "25,443,4000-4010",
        ),
    ];
    for (value, matcher, ports) in cases {
        for (flag, chain, direction) in [
            ("--skip-inbound-ports", "TRELLIS_INBOUND", "inbound"),
            ("--skip-outbound-ports", "TRELLIS_OUTBOUND", "outbound"),
        ] {
            let script = rules(&plan(&[flag, value]), Family::V4, "");
            let expected = format!(
                "-A {chain} {matcher}-m comment --comment \"trellis/{direction}: skip-{direction}-ports {ports}\" -j RETURN\n"
            );
            assert!(
                script.contains(&expected),
                "{flag} {value}: want {expected}in\n{script}"
            );
        }
    }
}

#[test]
fn skipped_ports_return_before_the_redirect() {
    let script = rules(&plan(&["--skip-outbound-ports", "25"]), Family::V4, "");
    let at = |needle: &str| {
        script
            .find(needle)
            .unwrap_or_else(|| panic!("no {needle} in\n{script}"))
    };
    assert!(at("--dport 25 ") < at("-j TRELLIS_OUTBOUND_REDIRECT"));
}

#[test]
fn long_port_lists_respect_the_multiport_limit() {
    // 20 single ports: 15 + 5. Ranges weigh two: 8 ranges are 7 + 1.
    let singles: Vec<String> = (1000..1020).map(|p| p.to_string()).collect();
    let ranges: Vec<String> = (0..8)
        .map(|i| format!("{}-{}", 2000 + 10 * i, 2005 + 10 * i))
        .collect();
    for (list, expected_rules) in [
        (singles.join(","), 2),
        (ranges.join(","), 2),
        ("1,2,3".into(), 1),
    ] {
        let script = rules(&plan(&["--skip-inbound-ports", &list]), Family::V4, "");
        let skips: Vec<&str> = rule_lines(&script)
            .into_iter()
            .filter(|l| l.contains("skip-inbound-ports"))
            .collect();
        assert_eq!(skips.len(), expected_rules, "{list}:\n{script}");

        let mut covered = Vec::new();
        for rule in skips {
            let words: Vec<&str> = rule.split_whitespace().collect();
            let ports = words[words
                .iter()
                .position(|w| *w == "--dports" || *w == "--dport")
                .unwrap()
                + 1];
            let weight: usize = ports
                .split(',')
                .map(|p| if p.contains(':') { 2 } else { 1 })
                .sum();
            assert!(weight <= 15, "{weight} ports in one multiport rule: {rule}");
            covered.extend(ports.split(',').map(|p| p.replace(':', "-")));
        }
        assert_eq!(covered.join(","), list, "every port, in order, once");
    }
}

#[test]
fn the_proxy_uid_is_never_redirected() {
    let script = rules(&plan(&["--proxy-uid", "1234"]), Family::V4, "");
    let uid_rule = "-A TRELLIS_OUTBOUND -m owner --uid-owner 1234 -m comment --comment \"trellis/outbound: skip traffic of the proxy user (uid 1234)\" -j RETURN";
    let uid_at = script
        .find(uid_rule)
        .unwrap_or_else(|| panic!("no uid rule in\n{script}"));
    assert!(uid_at < script.find("-j TRELLIS_OUTBOUND_REDIRECT").unwrap());
    assert!(!script.contains("7102"));
}

#[test]
fn loopback_is_never_redirected() {
    for (family, loopback, other) in [
        (Family::V4, "127.0.0.0/8", "::1/128"),
        (Family::V6, "::1/128", "127.0.0.0/8"),
    ] {
        let script = rules(&plan(&[]), family, "");
        let redirect = script.find("-j TRELLIS_OUTBOUND_REDIRECT").unwrap();
        for rule in [
            "-A TRELLIS_OUTBOUND -o lo ",
            &format!("-A TRELLIS_OUTBOUND -d {loopback} "),
        ] {
            let at = script
                .find(rule)
                .unwrap_or_else(|| panic!("{family}: no `{rule}` in\n{script}"));
            assert!(at < redirect, "{family}: `{rule}` after the redirect");
        }
        assert!(!script.contains(other), "{family}: {other} in\n{script}");
    }
}

#[test]
fn ipv6_script_differs_only_in_loopback() {
    let plan = plan(&[
        "--skip-inbound-ports",
        "22",
        "--skip-outbound-ports",
        "25-30",
    ]);
    let v4 = rules(&plan, Family::V4, "");
    let v6 = rules(&plan, Family::V6, "");
    assert_eq!(v6, v4.replace("127.0.0.0/8", "::1/128"));
    assert!(
        v6.contains("-A TRELLIS_OUTBOUND -d ::1/128 -m comment"),
        "{v6}"
    );
}

#[test]
fn rerunning_adds_no_second_jump() {
    let plan = plan(&[]);
    let first = rules(&plan, Family::V4, "");
    assert_eq!(first.matches("-j TRELLIS_INBOUND\n").count(), 1);
    assert_eq!(first.matches("-j TRELLIS_OUTBOUND\n").count(), 1);

    // Jump already present: the chains are redeclared (emptied) and
    // refilled, and no jump is added.
    let second = rules(&plan, Family::V4, &saved_after(&first));
    assert!(
        !second.contains("-I PREROUTING") && !second.contains("-I OUTPUT"),
        "{second}"
    );
    assert!(
        !second.contains("-j TRELLIS_INBOUND\n") && !second.contains("-j TRELLIS_OUTBOUND\n"),
        "{second}"
    );
    assert_eq!(
        second.lines().filter(|l| l.starts_with(':')).count(),
        4,
        "{second}"
    );
    assert_eq!(rule_lines(&second).len(), rule_lines(&first).len() - 2);
}

#[test]
fn a_missing_jump_is_added_alone() {
    // As iptables-save prints it, with someone else's DNAT rule too.
    let save = r#"# Generated by iptables-nft-save v1.8.9 (nf_tables)
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:TRELLIS_INBOUND - [0:0]
-A PREROUTING -p tcp -m comment --comment "trellis/inbound: capture TCP connections to the pod" -j TRELLIS_INBOUND
-A OUTPUT -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.0.5:8080
COMMIT
"#;
    let script = rules(&plan(&[]), Family::V4, save);
    let jumps: Vec<&str> = script.lines().filter(|l| l.starts_with("-I ")).collect();
    assert_eq!(jumps.len(), 1, "{script}");
    assert!(jumps[0].starts_with("-I OUTPUT 1 ") && jumps[0].ends_with("-j TRELLIS_OUTBOUND"));
    assert!(!script.contains("DNAT"), "never touches other rules");
}

#[test]
fn the_script_touches_only_trellis_chains() {
    let script = rules(&plan(&["--skip-outbound-ports", "25"]), Family::V4, "");
    for line in script.lines() {
        let ok = line == "*nat"
            || line == "COMMIT"
            || line.starts_with(":TRELLIS_")
            || line.starts_with("-A TRELLIS_")
            || line.starts_with("-I PREROUTING 1 ")
            || line.starts_with("-I OUTPUT 1 ");
        assert!(ok, "unexpected line: {line}");
    }
}

// ---- removal ----

#[test]
fn removal_deletes_jumps_then_chains_and_nothing_else() {
    let mut save = saved_after(&rules(&plan(&[]), Family::V4, ""));
    save = save.replace(
        "COMMIT\n",
        "-A OUTPUT -d 10.96.0.10/32 -p tcp -j DNAT --to-destination 10.0.0.5:8080\nCOMMIT\n",
    );
    let script = removal(&save).unwrap();
    let expected = r#"*nat
:TRELLIS_INBOUND - [0:0]
:TRELLIS_INBOUND_REDIRECT - [0:0]
:TRELLIS_OUTBOUND - [0:0]
:TRELLIS_OUTBOUND_REDIRECT - [0:0]
-D PREROUTING -p tcp -m comment --comment "trellis/inbound: capture TCP connections to the pod" -j TRELLIS_INBOUND
-D OUTPUT -p tcp -m comment --comment "trellis/outbound: capture TCP connections from the pod" -j TRELLIS_OUTBOUND
-X TRELLIS_INBOUND
-X TRELLIS_INBOUND_REDIRECT
-X TRELLIS_OUTBOUND
-X TRELLIS_OUTBOUND_REDIRECT
COMMIT
"#;
    assert_eq!(script, expected);
}

#[test]
fn removal_of_nothing_is_nothing() {
    assert_eq!(removal(""), None);
    assert_eq!(
        removal(
            "*nat\n:PREROUTING ACCEPT [0:0]\n-A OUTPUT -j DNAT --to-destination 10.0.0.1\nCOMMIT\n"
        ),
        None
    );
}

// ---- arguments ----

#[test]
fn defaults_are_the_spec_ports() {
    assert_eq!(
        plan(&[]),
        Plan {
            inbound_port: 7143,
            outbound_port: 7140,
            admin_port: 7191,
            proxy_uid: 7102,
            skip_inbound: vec![],
            skip_outbound: vec![],
        }
    );
    let args = parse(&[]);
    assert_eq!(
        (args.iptables_mode, args.ipv6, args.dry_run, args.remove),
        (IptablesMode::Auto, Ipv6Mode::Auto, false, false)
    );
}

#[test]
fn every_problem_is_reported_naming_its_flag() {
    let found = problems(&[
        "--inbound-port",
        "0",
        "--admin-port",
        "7140",
        "--skip-outbound-ports",
        "25,http",
    ]);
    assert_eq!(found.len(), 3, "{found:?}");
    assert_eq!(found[0], "--inbound-port 0: not a port (1-65535)");
    assert_eq!(
        found[1],
        "--outbound-port and --admin-port are both 7140: the proxy's ports must differ"
    );
    assert!(
        found[2].starts_with(r#"--skip-outbound-ports "25,http": "http""#),
        "{}",
        found[2]
    );

    let err = Plan::from_args(&parse(&["--outbound-port", "7143"])).unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert_eq!(
        err.to_string(),
        "invalid arguments: --inbound-port and --outbound-port are both 7143: the proxy's ports must differ"
    );
}

#[test]
fn bad_skip_ranges_are_refused() {
    for value in ["0", "9-3", "70000", "1-2-3"] {
        let found = problems(&["--skip-inbound-ports", value]);
        assert!(
            found[0].starts_with(&format!("--skip-inbound-ports {value:?}: ")),
            "{found:?}"
        );
    }
}

#[test]
fn clap_refuses_what_is_not_a_number_or_a_mode() {
    for flags in [
        &["--inbound-port", "70000"][..],
        &["--proxy-uid", "-1"],
        &["--iptables-mode", "iptables"],
        &["--ipv6", "maybe"],
        &["--dry-run=perhaps"],
    ] {
        let argv = std::iter::once("init").chain(flags.iter().copied());
        assert!(InitCli::try_parse_from(argv).is_err(), "{flags:?} accepted");
    }
    let args = parse(&[
        "--iptables-mode",
        "legacy",
        "--ipv6",
        "off",
        "--dry-run",
        "--remove",
    ]);
    assert_eq!(
        (args.iptables_mode, args.ipv6, args.dry_run, args.remove),
        (IptablesMode::Legacy, Ipv6Mode::Off, true, true)
    );
}

#[test]
fn every_flag_also_reads_a_trellis_init_variable() {
    let cmd = InitCli::command();
    let mut seen = 0;
    for arg in cmd
        .get_arguments()
        .filter(|a| a.get_long().is_some_and(|l| l != "help"))
    {
        let long = arg.get_long().unwrap_or_default();
        let expected = format!("TRELLIS_INIT_{}", long.to_uppercase().replace('-', "_"));
        assert_eq!(
            arg.get_env().and_then(|e| e.to_str()),
            Some(expected.as_str()),
            "--{long}"
        );
        seen += 1;
    }
    assert_eq!(seen, 11);
}

// ---- the CNI plugin's view: container arguments and CHECK ----

/// The arguments the injector gives `trellis-init` in CNI mode.
fn cni_container_args(extra: &[&str]) -> Vec<String> {
    [
        "init",
        "--check",
        "--proxy-uid",
        "7102",
        "--iptables-mode",
        "auto",
    ]
    .iter()
    .chain(extra)
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn the_check_flag_is_the_one_init_parses() {
    let cmd = InitCli::command();
    let check = cmd.get_arguments().find(|a| a.get_id() == "check").unwrap();
    assert_eq!(format!("--{}", check.get_long().unwrap()), CHECK_FLAG);
}

#[test]
fn container_args_parse_with_the_init_parser() {
    let args = InitArgs::from_container_args(&cni_container_args(&["--skip-inbound-ports", "22"]))
        .unwrap();
    assert!(args.is_check());
    let plan = Plan::from_args(&args).unwrap();
    assert_eq!(plan.skip_inbound, parse_ports("22").unwrap());
    assert_eq!(plan.proxy_uid, 7102);

    let installing = args.to_install();
    assert!(!installing.is_check() && !installing.remove && !installing.dry_run);
    assert_eq!(Plan::from_args(&installing).unwrap(), plan);
    assert!(args.to_remove().remove);

    let init_mode: Vec<String> = ["init", "--proxy-uid", "7102"].map(String::from).to_vec();
    assert!(!InitArgs::from_container_args(&init_mode)
        .unwrap()
        .is_check());
}

#[test]
fn container_args_that_are_not_init_are_refused_with_the_reason() {
    let bad = |argv: &[&str]| {
        InitArgs::from_container_args(&argv.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap_err()
    };
    assert!(bad(&["init", "--check", "--inbound-port", "x"]).contains("--inbound-port"));
    assert!(bad(&["init", "--no-such-flag"]).contains("--no-such-flag"));
    assert!(bad(&["run"]).contains("run"));
    assert!(bad(&["init", "--check", "--remove"]).contains("cannot be used with"));
}

#[test]
fn check_finds_no_difference_in_the_rules_it_asked_for() {
    let plan = plan(&[
        "--skip-inbound-ports",
        "22,4000-4010",
        "--skip-outbound-ports",
        "25",
    ]);
    let saved = saved_after(&rules(&plan, Family::V4, ""));
    assert_eq!(differences(&plan, Family::V4, &saved), Vec::<String>::new());
}

#[test]
fn check_names_each_missing_changed_or_extra_rule() {
    let asked = plan(&["--skip-inbound-ports", "22"]);
    let saved = saved_after(&rules(&asked, Family::V4, ""));

    // A rule deleted by hand.
    let without_uid: String = saved
        .lines()
        .filter(|l| !l.contains("--uid-owner"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        differences(&asked, Family::V4, &without_uid),
        ["TRELLIS_OUTBOUND lacks the rule \"trellis/outbound: skip traffic of the proxy user (uid 7102)\""]
    );

    // Installed for other skip ports than the pod asks for now.
    let other = plan(&["--skip-inbound-ports", "23"]);
    let found = differences(&other, Family::V4, &saved);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found[0].contains("lacks") && found[0].contains("skip-inbound-ports 23"),
        "{found:?}"
    );
    assert!(
        found[1].contains("unexpected") && found[1].contains("skip-inbound-ports 22"),
        "{found:?}"
    );

    // The jump from OUTPUT gone.
    let no_jump: String = saved
        .lines()
        .filter(|l| !l.starts_with("-A OUTPUT"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        differences(&asked, Family::V4, &no_jump),
        ["OUTPUT does not jump to TRELLIS_OUTBOUND"]
    );

    // Nothing at all.
    let found = differences(&asked, Family::V4, "*nat\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n");
    assert_eq!(
        found.iter().filter(|p| p.ends_with("is missing")).count(),
        4,
        "{found:?}"
    );
    assert_eq!(
        found.iter().filter(|p| p.contains("does not jump")).count(),
        2,
        "{found:?}"
    );
}

// ---- variant, IPv6, reporting ----

#[test]
fn auto_mode_prefers_the_variant_holding_rules() {
    use Variant::*;
    let cases = [
        // (nft rules, legacy rules, nft installed, legacy installed) → variant
        ((Some(0), Some(12), true, true), Legacy),
        ((Some(5), Some(0), true, true), Nft),
        ((Some(7), Some(3), true, true), Nft),
        ((Some(0), Some(0), true, true), Nft),
        ((None, Some(0), false, true), Legacy),
        ((None, Some(4), false, true), Legacy),
        ((Some(0), None, true, false), Nft),
        ((None, None, false, false), Plain),
    ];
    for ((nft, legacy, nft_installed, legacy_installed), expected) in cases {
        let Choice { variant, reason } =
            apply::pick_variant(nft, legacy, nft_installed, legacy_installed);
        assert_eq!(
            variant, expected,
            "{nft:?} {legacy:?} {nft_installed} {legacy_installed}: {reason}"
        );
        assert!(reason.starts_with("auto: "), "{reason}");
    }
}

#[test]
fn tool_names() {
    assert_eq!(
        Variant::Nft.tool(Family::V4, "restore"),
        "iptables-nft-restore"
    );
    assert_eq!(
        Variant::Legacy.tool(Family::V6, "save"),
        "ip6tables-legacy-save"
    );
    assert_eq!(
        Variant::Plain.tool(Family::V6, "restore"),
        "ip6tables-restore"
    );
}

#[test]
fn ipv6_needs_an_address_and_not_disabled() {
    let lo = "00000000000000000000000000000001 01 80 10 80       lo\n";
    assert!(apply::ipv6_present(Some(lo), Some("0\n")));
    assert!(!apply::ipv6_present(Some(lo), Some("1\n")));
    assert!(!apply::ipv6_present(Some(""), Some("0\n")));
    assert!(!apply::ipv6_present(None, None));
    assert!(!apply::ipv6_present(Some(lo), None));
}

#[test]
fn a_failed_restore_names_the_line() {
    assert_eq!(
        apply::failed_line_number("iptables-restore: line 7 failed"),
        Some(7)
    );
    assert_eq!(
        apply::failed_line_number(
            "iptables-nft-restore: line 12 failed: No chain/target/match by that name."
        ),
        Some(12)
    );
    assert_eq!(
        apply::failed_line_number("Permission denied (you must be root)"),
        None
    );

    let status = std::process::Command::new("false").status().unwrap();
    let err = InitError::ToolFailed {
        tool: "iptables-nft-restore".into(),
        status,
        stderr: "iptables-nft-restore: line 2 failed\n".into(),
        failed_line: Some("-A TRELLIS_X -j NOPE".into()),
    };
    assert_eq!(
        err.to_string(),
        "iptables-nft-restore failed (exit status: 1): iptables-nft-restore: line 2 failed (the line: `-A TRELLIS_X -j NOPE`)"
    );
    assert_eq!(err.exit_code(), 1);
}

#[test]
fn dry_run_output_is_labelled_restore_input() {
    let choice = Choice {
        variant: Variant::Nft,
        reason: "--iptables-mode nft".into(),
    };
    let mut out = Vec::new();
    let current = Current::Unreadable("Permission denied (you must be root)".into());
    print_script(
        &mut out,
        Family::V6,
        &choice,
        &current,
        Some("*nat\nCOMMIT\n"),
    )
    .unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "# ip6tables-restore (v6): ip6tables-nft-restore --noflush --wait=30 (nft: --iptables-mode nft)\n\
         # could not read the current rules, so assuming none: Permission denied (you must be root)\n\
         *nat\nCOMMIT\n"
    );
}
