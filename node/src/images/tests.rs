use super::*;

const SHA: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[test]
fn references_normalize_to_their_repository() {
    let digested = format!("example.com:5000/team/app@{SHA}");
    let both = format!("app:1.0@{SHA}");
    let cases: &[(&str, &str)] = &[
        ("nginx", "docker.io/library/nginx"),
        ("nginx:1.25", "docker.io/library/nginx"),
        ("library/nginx", "docker.io/library/nginx"),
        ("docker.io/nginx", "docker.io/library/nginx"),
        (
            "index.docker.io/library/nginx:latest",
            "docker.io/library/nginx",
        ),
        ("user/app:tag", "docker.io/user/app"),
        ("localhost/app", "localhost/app"),
        ("localhost:5000/app:1", "localhost:5000/app"),
        (
            "example.com:5000/team/app:v1.2",
            "example.com:5000/team/app",
        ),
        (&digested, "example.com:5000/team/app"),
        (&both, "docker.io/library/app"),
        ("[::1]:5000/app:dev", "[::1]:5000/app"),
        ("Registry/app", "Registry/app"),
        ("a.b/c__d/e-f.g_h---i", "a.b/c__d/e-f.g_h---i"),
        (
            "ghcr.io/trellis-mesh/trellis-proxy:0.1.0",
            "ghcr.io/trellis-mesh/trellis-proxy",
        ),
        // No `/`: the `:5000` is a tag, as Docker reads it.
        ("registry:5000", "docker.io/library/registry"),
    ];
    for (reference, repository) in cases {
        let got = Repository::of(reference).unwrap_or_else(|e| panic!("{reference}: {e}"));
        assert_eq!(got.as_str(), *repository, "{reference}");
    }
}

#[test]
fn bad_references_are_invalid_image_names() {
    let cases: &[(&str, &str)] = &[
        ("", "empty reference"),
        ("Nginx", "repository name must be lowercase"),
        ("team/App", "repository name must be lowercase"),
        ("app:", "invalid tag"),
        ("app:-x", "invalid tag"),
        ("app@sha256:abc", "invalid digest"),
        ("app@md5", "invalid digest"),
        ("a//b", "empty repository path component"),
        ("a/b/", "empty repository path component"),
        (
            "-a",
            "repository path components start and end with a letter or digit",
        ),
        ("a.-b", "invalid character in repository name"),
        ("a___b", "invalid character in repository name"),
        ("a b", "invalid character in repository name"),
        ("example.com:port/app", "invalid registry port"),
        ("exa_mple.com/app", "invalid registry host"),
        ("[::zz]:5000/app", "invalid registry host"),
        (
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "a 64-character hexadecimal string is an image ID, not a name",
        ),
    ];
    for (reference, why) in cases {
        let err = Repository::of(reference).expect_err(reference);
        assert_eq!(err.reason(), "InvalidImageName", "{reference}");
        assert_eq!(
            err,
            ImageError::InvalidName {
                image: (*reference).to_owned(),
                why
            },
            "{reference}"
        );
    }
    let long = format!("example.com/{}", "a".repeat(250));
    assert!(Repository::of(&long).is_err());
}

#[test]
fn builtin_images_run_their_binary_from_bin_dir() {
    let map = ImageMap::builtin(Path::new("/opt/trellis/bin"));
    let cases: &[(&str, &str, &[&str], Option<u32>)] = &[
        (
            "ghcr.io/trellis-mesh/trellis-proxy:0.1.0",
            "trellis-proxy",
            &[],
            Some(7102),
        ),
        (
            "ghcr.io/trellis-mesh/trellis-identity:0.1.0",
            "trellis-identity",
            &[],
            Some(65532),
        ),
        (
            "ghcr.io/trellis-mesh/trellis-controller",
            "trellis-controller",
            &[],
            Some(65532),
        ),
        (
            "ghcr.io/trellis-mesh/trellis-injector:dev",
            "trellis-injector",
            &[],
            Some(65532),
        ),
        (
            "ghcr.io/trellis-mesh/trellis-cni:0.1.0",
            "trellis-cni",
            &["install"],
            None,
        ),
        (
            "ghcr.io/trellis-mesh/trellis-app:latest",
            "trellis-app",
            &[],
            None,
        ),
    ];
    for (image, binary, args, user) in cases {
        let got = map.resolve(image, None, None).unwrap();
        assert_eq!(
            got.program,
            Path::new("/opt/trellis/bin").join(binary),
            "{image}"
        );
        assert_eq!(got.args, *args, "{image}");
        assert_eq!(got.user, *user, "{image}");
    }
}

/// An image like `busybox`: no entrypoint, a `CMD`, programs on `PATH`.
fn test_map() -> ImageMap {
    let mut map = ImageMap::default();
    map.extend_from_yaml(
        r#"
images:
  - image: example.com/app
    entrypoint: [/app/server, --config, /etc/app.yaml]
    cmd: [--port, "8080"]
    programs:
      /app/server: /opt/app/server
      /usr/bin/env: /usr/bin/env
      /bin/sh: /bin/sh
      /usr/local/bin/sh: /opt/app/sh
  - image: busybox
    cmd: [sh]
    programs:
      /bin/sh: /bin/sh
      /bin/true: /bin/true
  - image: example.com/none
    programs:
      /bin/true: /bin/true
"#,
    )
    .unwrap();
    map
}

fn strings(words: &[&str]) -> Vec<String> {
    words.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn command_and_args_follow_kubernetes_rules() {
    let map = test_map();
    // (image, command, args) → (program, args)
    type Case<'a> = (
        &'a str,
        Option<&'a [&'a str]>,
        Option<&'a [&'a str]>,
        &'a str,
        &'a [&'a str],
    );
    let cases: &[Case] = &[
        // Neither: ENTRYPOINT + CMD.
        (
            "example.com/app:1",
            None,
            None,
            "/opt/app/server",
            &["--config", "/etc/app.yaml", "--port", "8080"],
        ),
        // args: ENTRYPOINT + args.
        (
            "example.com/app:1",
            None,
            Some(&["--port", "9090"]),
            "/opt/app/server",
            &["--config", "/etc/app.yaml", "--port", "9090"],
        ),
        // command: command alone, CMD ignored.
        (
            "example.com/app:1",
            Some(&["/usr/bin/env"]),
            None,
            "/usr/bin/env",
            &[],
        ),
        // command and args.
        (
            "example.com/app:1",
            Some(&["/bin/sh", "-c"]),
            Some(&["echo hi"]),
            "/bin/sh",
            &["-c", "echo hi"],
        ),
        // Empty lists are unset, as in the API.
        (
            "example.com/app:1",
            Some(&[]),
            Some(&[]),
            "/opt/app/server",
            &["--config", "/etc/app.yaml", "--port", "8080"],
        ),
        // A bare name: the first PATH directory that has it.
        (
            "example.com/app:1",
            Some(&["sh", "-c", "true"]),
            None,
            "/opt/app/sh",
            &["-c", "true"],
        ),
        (
            "example.com/app:1",
            Some(&["env"]),
            None,
            "/usr/bin/env",
            &[],
        ),
        // No entrypoint: CMD's first word is the program.
        ("busybox", None, None, "/bin/sh", &[]),
        (
            "docker.io/library/busybox:1.36",
            None,
            Some(&["true"]),
            "/bin/true",
            &[],
        ),
        (
            "example.com/none",
            None,
            Some(&["/bin/true", "x"]),
            "/bin/true",
            &["x"],
        ),
    ];
    for (image, command, args, program, want) in cases {
        let command = command.map(strings);
        let args = args.map(strings);
        let got = map
            .resolve(image, command.as_deref(), args.as_deref())
            .unwrap_or_else(|e| panic!("{image} {command:?} {args:?}: {e}"));
        assert_eq!(
            got.program,
            Path::new(program),
            "{image} {command:?} {args:?}"
        );
        assert_eq!(got.args, *want, "{image} {command:?} {args:?}");
    }
}

#[test]
fn unrunnable_containers_say_why() {
    let map = test_map();
    let err = map.resolve("example.com/other:1", None, None).unwrap_err();
    assert_eq!(err.reason(), "ErrImageNeverPull");
    let message = err.to_string();
    assert!(
        message.contains("\"example.com/other:1\" has no local program"),
        "{message}"
    );
    assert!(
        message.contains("docs/node-agent.md, section \"Images\""),
        "{message}"
    );

    let command = strings(&["python3", "-m", "http.server"]);
    let err = map
        .resolve("example.com/app", Some(&command), None)
        .unwrap_err();
    assert_eq!(err.reason(), "CreateContainerError");
    assert_eq!(
        err.to_string(),
        "image \"example.com/app\" has no program \"python3\" (its programs: /app/server, \
         /bin/sh, /usr/bin/env, /usr/local/bin/sh); see docs/node-agent.md, section \
         \"Images\" in the Trellis docs"
    );
    // A relative path is not searched.
    let command = strings(&["bin/sh"]);
    let err = map
        .resolve("example.com/app", Some(&command), None)
        .unwrap_err();
    assert_eq!(err.reason(), "CreateContainerError");

    let err = map.resolve("example.com/none", None, None).unwrap_err();
    assert_eq!(err.reason(), "CreateContainerError");
    assert!(err.to_string().contains("no command specified"), "{err}");

    let err = map.resolve("Example.com/App", None, None).unwrap_err();
    assert_eq!(err.reason(), "InvalidImageName");
}

#[test]
fn an_entrypoint_of_one_empty_word_is_none() {
    let mut map = ImageMap::default();
    let image = Image {
        entrypoint: strings(&[""]),
        cmd: strings(&["/bin/true"]),
        user: None,
        programs: BTreeMap::from([("/bin/true".to_owned(), PathBuf::from("/bin/true"))]),
    };
    map.insert(Repository::of("x").unwrap(), image);
    assert_eq!(
        map.resolve("x", None, None).unwrap().program,
        Path::new("/bin/true")
    );
}

#[test]
fn later_entries_replace_earlier_ones_and_builtins() {
    let mut map = ImageMap::builtin(Path::new("/bin-dir"));
    map.extend_from_yaml(
        "images:
  - {image: example.com/x, entrypoint: [/a], programs: {/a: /one}}
  - {image: example.com/x, entrypoint: [/a], user: 10, programs: {/a: /two}}
  - {image: ghcr.io/trellis-mesh/trellis-app, entrypoint: [/b], programs: {/b: /mine}}
",
    )
    .unwrap();
    let x = map.resolve("example.com/x:1", None, None).unwrap();
    assert_eq!((x.program, x.user), (PathBuf::from("/two"), Some(10)));
    let app = map
        .resolve("ghcr.io/trellis-mesh/trellis-app:1", None, None)
        .unwrap();
    assert_eq!(app.program, Path::new("/mine"));
}

#[test]
fn bad_map_files_name_the_entry_and_change_nothing() {
    let cases: &[(&str, &str)] = &[
        ("images: 3", "image map: images: invalid type"),
        ("imagez: []", "image map: unknown field `imagez`"),
        (
            "images: [{image: example.com/ok, programs: {/a: /a}}, {image: example.com/x, programs: {/a: /a}, entrypiont: [/a]}]",
            "image map, images[1] (example.com/x): unknown field `entrypiont`",
        ),
        (
            "images: [{image: example.com/x:1.0, programs: {/a: /a}}]",
            "image map, images[0] (example.com/x:1.0): a mapping is for every tag of a \
             repository: write example.com/x without a tag or digest",
        ),
        (
            "images: [{image: Example, programs: {/a: /a}}]",
            "image map, images[0] (Example): repository name must be lowercase",
        ),
        (
            "images: [{image: example.com/x, programs: {}}]",
            "image map, images[0] (example.com/x): an image needs at least one program",
        ),
        (
            "images: [{image: example.com/x, programs: {a: /a}}]",
            "image map, images[0] (example.com/x): program \"a\" is not an absolute path",
        ),
        (
            "images: [{image: example.com/x, programs: {/a: bin/a}}]",
            "image map, images[0] (example.com/x): the local program bin/a of /a is not an \
             absolute path",
        ),
        (
            "images: [{programs: {/a: /a}}]",
            "image map, images[0] (no image): missing field `image`",
        ),
        (
            "images: [{image: example.com/x, user: root, programs: {/a: /a}}]",
            "image map, images[0] (example.com/x): invalid type: string \"root\", expected u32",
        ),
    ];
    for (text, want) in cases {
        let mut map = ImageMap::default();
        let err = map.extend_from_yaml(text).unwrap_err().to_string();
        assert!(err.starts_with(want), "{text}\n got: {err}\nwant: {want}");
        assert!(map.images.is_empty(), "{text}");
    }
}
