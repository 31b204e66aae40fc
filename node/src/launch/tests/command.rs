//! The command line of a launch, `setpriv`'s flags, and what must exist.

use std::ffi::OsStr;
use std::fs;

use super::*;

fn plain() -> Launch {
    app("").launch().unwrap()
}

#[test]
fn setpriv_flags() {
    let set = |names: &[&str]| {
        names
            .iter()
            .map(|c| (*c).to_owned())
            .collect::<BTreeSet<_>>()
    };
    let all = set(&ALL_CAPABILITIES);
    // (uid, groups, capabilities, no_new_privs, flags after --reuid/--regid)
    type Case<'a> = (u32, &'a [u32], BTreeSet<String>, bool, &'a [&'a str]);
    let cases: Vec<Case> = vec![
        (
            0,
            &[0],
            set(&["chown", "kill"]),
            false,
            &[
                "--groups=0",
                "--bounding-set=-all,+chown,+kill",
                "--inh-caps=-all",
            ],
        ),
        (
            0,
            &[],
            set(&[]),
            true,
            &[
                "--clear-groups",
                "--bounding-set=-all",
                "--inh-caps=-all",
                "--no-new-privs",
            ],
        ),
        // Root with every capability: nothing to limit.
        (0, &[0, 10], all.clone(), false, &["--groups=0,10"]),
        (
            65532,
            &[65532, 2000],
            set(&["net_admin", "net_bind_service"]),
            true,
            &[
                "--groups=65532,2000",
                "--bounding-set=-all,+net_admin,+net_bind_service",
                "--inh-caps=-all,+net_admin,+net_bind_service",
                "--ambient-caps=-all,+net_admin,+net_bind_service",
                "--no-new-privs",
            ],
        ),
        (
            1000,
            &[0],
            set(&[]),
            false,
            &["--groups=0", "--bounding-set=-all", "--inh-caps=-all"],
        ),
        (
            1000,
            &[0],
            all,
            false,
            &["--groups=0", "--inh-caps=+all", "--ambient-caps=+all"],
        ),
    ];
    for (uid, groups, capabilities, no_new_privs, want) in cases {
        let launch = Launch {
            uid,
            gid: 7,
            groups: groups.to_vec(),
            capabilities,
            no_new_privs,
            ..plain()
        };
        let mut full = vec![format!("--reuid={uid}"), "--regid=7".to_owned()];
        full.extend(want.iter().map(|s| (*s).to_owned()));
        assert_eq!(launch.setpriv_flags(), full, "{uid} {groups:?}");
    }
}

#[test]
fn the_command_line_carries_user_data_only_as_arguments() {
    let launch = Launch {
        program: PathBuf::from("/opt/app/server"),
        args: strings(&["--name", "$(x); rm -rf /", "a=b"]),
        env: vec![
            ("A".into(), "1 2".into()),
            ("LD_PRELOAD".into(), "/tmp/x.so".into()),
        ],
        uid: 1000,
        gid: 1000,
        groups: vec![1000],
        capabilities: BTreeSet::new(),
        no_new_privs: true,
        mounts: vec![
            Mount {
                source: "/pods/u1/data".into(),
                target: "/data".into(),
                read_only: false,
            },
            Mount {
                source: "/pods/u1/config".into(),
                target: "/etc/app".into(),
                read_only: true,
            },
        ],
        working_dir: Some("/data".into()),
    };
    let command = launch.command("trellis-pod-u1");
    assert_eq!(command.get_program(), "ip");
    let args: Vec<&OsStr> = command.get_args().collect();
    let want: Vec<&str> = vec![
        "netns",
        "exec",
        "trellis-pod-u1",
        "sh",
        "-ec",
        process::SCRIPT,
        "trellis-launch",
        "/data",
        "/pods/u1/data",
        "/data",
        "rw",
        "/pods/u1/config",
        "/etc/app",
        "ro",
        "--",
        "setpriv",
        "--reuid=1000",
        "--regid=1000",
        "--groups=1000",
        "--bounding-set=-all",
        "--inh-caps=-all",
        "--no-new-privs",
        "--",
        "env",
        "-i",
        "--",
        "A=1 2",
        "LD_PRELOAD=/tmp/x.so",
        "/opt/app/server",
        "--name",
        "$(x); rm -rf /",
        "a=b",
    ];
    assert_eq!(args, want);
    // The root part runs with a fixed environment: the container's is
    // only `env -i`'s arguments.
    let envs: Vec<_> = command.get_envs().collect();
    assert_eq!(
        envs,
        [(
            OsStr::new("PATH"),
            Some(OsStr::new("/usr/sbin:/usr/bin:/sbin:/bin"))
        )]
    );

    let none = Launch {
        working_dir: None,
        mounts: vec![],
        ..launch
    };
    let command = none.command("n");
    let args: Vec<&OsStr> = command.get_args().collect();
    assert_eq!(&args[7..10], ["", "--", "setpriv"]);
}

#[test]
fn mount_targets_are_where_the_process_will_see_them() {
    let dir = std::env::temp_dir().join(format!("trellis-launch-targets-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("vol")).unwrap();
    fs::write(dir.join("vol/file"), "x").unwrap();
    let vol = dir.join("vol");
    let launch = Launch {
        mounts: vec![
            Mount {
                source: vol.clone(),
                target: "/srv".into(),
                read_only: false,
            },
            Mount {
                source: vol.join("missing"),
                target: "/other".into(),
                read_only: false,
            },
            Mount {
                source: vol.join("file"),
                target: "/srv/etc/app.yaml".into(),
                read_only: true,
            },
        ],
        working_dir: Some("/srv/work".into()),
        ..plain()
    };
    let got = launch.mount_targets();
    fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        got,
        [
            (PathBuf::from("/srv"), true),
            (vol.join("missing"), true),
            (PathBuf::from("/other"), true),
            // Under /srv: inside the volume mounted there.
            (vol.join("etc/app.yaml"), false),
            (vol.join("work"), true),
        ]
    );
}
