//! The matcher against Docker's documented examples and moby/patternmatcher's own cases.

use super::*;

fn ignore(lines: &[&str]) -> Dockerignore {
    Dockerignore::parse(&lines.join("\n")).expect("valid patterns")
}

fn excluded(patterns: &[&str], path: &str) -> bool {
    ignore(patterns).excludes(path)
}

#[test]
fn docker_documented_examples() {
    // docs.docker.com, ".dockerignore files": `# comment`, `*/temp*`, `*/*/temp*`, `temp?`.
    let d = ignore(&["# comment", "*/temp*", "*/*/temp*", "temp?"]);
    assert!(d.excludes("somedir/temporary.txt"));
    assert!(d.excludes("somedir/temp"));
    assert!(d.excludes("somedir/temp/inside.txt"));
    assert!(d.excludes("somedir/subdir/temporary.txt"));
    assert!(d.excludes("tempa"));
    assert!(d.excludes("tempb"));
    assert!(!d.excludes("temporary.txt"), "*/temp* is not at the top");
    assert!(!d.excludes("temp"), "temp? needs one more character");
    assert!(!d.excludes("# comment"));
    assert!(!d.excludes("a/b/c/temp1"));
    // /foo/bar and foo/bar both exclude bar in foo, and nothing else.
    for p in [
        "/foo/bar",
        "foo/bar",
        "./foo/bar",
        "foo//bar/",
        "foo/./x/../bar",
    ] {
        let d = ignore(&[p]);
        assert!(d.excludes("foo/bar"), "{p}");
        assert!(d.excludes("foo/bar/baz"), "{p}");
        assert!(!d.excludes("bar"), "{p}");
        assert!(!d.excludes("foo"), "{p}");
        assert!(!d.excludes("x/foo/bar"), "{p}");
    }
    // `**/*.go` excludes every .go file, at the root too.
    let d = ignore(&["**/*.go"]);
    assert!(d.excludes("main.go"));
    assert!(d.excludes("a/b/c/x.go"));
    assert!(!d.excludes("a/b/c/x.gox"));
    // `*.md` + `!README.md`: every markdown file but README.md (the root's only).
    let d = ignore(&["*.md", "!README.md"]);
    assert!(d.excludes("CHANGES.md"));
    assert!(!d.excludes("README.md"));
    assert!(!d.excludes("docs/CHANGES.md"), "*.md is at the top only");
    // The last matching line wins.
    let d = ignore(&["*.md", "!README*.md", "README-secret.md"]);
    assert!(d.excludes("README-secret.md"));
    assert!(!d.excludes("README-public.md"));
    assert!(d.excludes("other.md"));
    let d = ignore(&["*.md", "README-secret.md", "!README*.md"]);
    assert!(!d.excludes("README-secret.md"));
    assert!(!d.excludes("README.md"));
    // `*` then exceptions: say what goes in instead of what stays out.
    let d = ignore(&["*", "!src", "!Cargo.toml"]);
    assert!(d.excludes("target/x"));
    assert!(!d.excludes("src/main.rs"));
    assert!(!d.excludes("Cargo.toml"));
}

#[test]
fn moby_patternmatcher_cases() {
    // (pattern, path, excluded as MatchesOrParentMatches answers), from patternmatcher_test.go.
    let cases: &[(&str, &str, bool)] = &[
        ("**", "file", true),
        ("**/", "file", true),
        ("**", "dir/file", true),
        ("**/**", "dir/file", true),
        ("dir/**", "dir/file", true),
        ("dir/**", "dir/dir2/file", true),
        ("**/dir", "dir", true),
        ("**/dir", "dir/file", true),
        ("**/dir2/*", "dir/dir2/file", true),
        ("**/dir2/**", "dir/dir2/dir3/file", true),
        ("**file", "file", true),
        ("**file", "dir/file", true),
        ("**/file", "dir/file", true),
        ("**file", "dir/dir/file", true),
        ("**/file", "dir/dir/file", true),
        ("**/file*", "dir/dir/file", true),
        ("**/file*", "dir/dir/file.txt", true),
        ("**/file*txt", "dir/dir/file.txt", true),
        ("**/file*.txt", "dir/dir/file.txt", true),
        ("**/file*.txt*", "dir/dir/file.txt", true),
        ("**/**/*.txt", "dir/dir/file.txt", true),
        ("**/**/*.txt2", "dir/dir/file.txt", false),
        ("**/*.txt", "file.txt", true),
        ("**/**/*.txt", "file.txt", true),
        ("a**/*.txt", "a/file.txt", true),
        ("a**/*.txt", "a/dir/file.txt", true),
        ("a**/*.txt", "a/dir/dir/file.txt", true),
        ("a/*.txt", "a/dir/file.txt", false),
        ("a/*.txt", "a/file.txt", true),
        ("a/*.txt**", "a/file.txt", true),
        ("a[b-d]e", "ae", false),
        ("a[b-d]e", "ace", true),
        ("a[b-d]e", "aae", false),
        ("a[^b-d]e", "aze", true),
        (".*", ".foo", true),
        (".*", "foo", false),
        ("abc.def", "abcdef", false),
        ("abc.def", "abc.def", true),
        ("abc.def", "abcZdef", false),
        ("abc?def", "abcZdef", true),
        ("abc?def", "abcdef", false),
        ("**/foo/bar", "foo/bar", true),
        ("**/foo/bar", "dir/foo/bar", true),
        ("**/foo/bar", "dir/dir2/foo/bar", true),
        ("abc/**", "abc", false),
        ("abc/**", "abc/def", true),
        ("abc/**", "abc/def/ghi", true),
        ("**/.foo", ".foo", true),
        ("**/.foo", "bar.foo", false),
        ("a(b)c/def", "a(b)c/def", true),
        ("a(b)c/def", "a(b)c/xyz", false),
        ("a.|)$(}+{bc", "a.|)$(}+{bc", true),
        (
            "dist/*.whl",
            "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
            true,
        ),
        ("a\\\\", "a\\", true),
        ("a\\*b", "a*b", true),
        // Go's filepath.Match cases that moby keeps.
        ("abc", "abc", true),
        ("*", "abc", true),
        ("*c", "abc", true),
        ("a*", "a", true),
        ("a*", "abc", true),
        ("a*", "ab/c", true),
        ("a*/b", "abc/b", true),
        ("a*/b", "a/c/b", false),
        ("a*b*c*d*e*/f", "axbxcxdxe/f", true),
        ("a*b*c*d*e*/f", "axbxcxdxexxx/f", true),
        ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false),
        ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", false),
        ("a*b?c*x", "abxbbxdbxebxczzx", true),
        ("a*b?c*x", "abxbbxdbxebxczzy", false),
        ("ab[c]", "abc", true),
        ("ab[b-d]", "abc", true),
        ("ab[e-g]", "abc", false),
        ("ab[^c]", "abc", false),
        ("ab[^b-d]", "abc", false),
        ("ab[^e-g]", "abc", true),
        ("a\\*b", "ab", false),
        ("a?b", "a☺b", true),
        ("a[^a]b", "a☺b", true),
        ("a???b", "a☺b", false),
        ("a[^a][^a][^a]b", "a☺b", false),
        ("[a-ζ]*", "α", true),
        ("*[a-ζ]", "A", false),
        ("a?b", "a/b", false),
        ("a*b", "a/b", false),
        ("[\\]a]", "]", true),
        ("[\\-]", "-", true),
        ("[x\\-]", "x", true),
        ("[x\\-]", "-", true),
        ("[x\\-]", "z", false),
        ("[\\-x]", "x", true),
        ("[\\-x]", "-", true),
        ("[\\-x]", "a", false),
        ("*x", "xxx", true),
    ];
    for (pattern, path, want) in cases {
        assert_eq!(
            excluded(&[pattern], path),
            *want,
            "pattern {pattern:?} path {path:?}"
        );
    }
    // Several patterns.
    assert!(!excluded(
        &["**", "!util/docker/web"],
        "util/docker/web/foo"
    ));
    assert!(excluded(
        &["**", "!util/docker/web", "util/docker/web/foo"],
        "util/docker/web/foo"
    ));
    assert!(!excluded(
        &["**", "!dist/*.whl"],
        "dist/x-1.0+g1-py3-none-any.whl"
    ));
    assert!(excluded(&["!fileutils.go", "*.go"], "fileutils.go"));
    assert!(!excluded(&["*.go", "!fileutils.go"], "fileutils.go"));
    for dir in ["docs", "docs/", "docs/*"] {
        assert!(!excluded(&[dir, "!docs/README.md"], "docs/README.md"));
        assert!(excluded(&[dir, "!docs/README.md"], "docs/other.md"));
    }
    assert!(!excluded(&["*.go"], "."));
    assert!(!excluded(&[], "any/path"));
}

#[test]
fn docker_quirks_are_kept() {
    // `**foo` is a suffix test; `foo**` a prefix one.
    assert!(excluded(&["**foo"], "barfoo"));
    assert!(excluded(&["foo**"], "foobar/x"));
    // moby's regular expression lets a class match `/`.
    assert!(excluded(&["a[^x]b"], "a/b"));
}

#[test]
fn the_file_is_read_as_docker_reads_it() {
    let text = "\u{feff}test1\r\n/test2\n/a/file/here\n\nlastfile\n# this is a comment\n \
                # not one: a pattern\n! /inverted/abs/path\n   \n";
    let d = Dockerignore::parse(text).expect("valid");
    assert_eq!(
        format!("{d:?}"),
        r##"["test1", "test2", "a/file/here", "lastfile", "# not one: a pattern", "!inverted/abs/path"]"##
    );
    assert_eq!(d.len(), 6);
    assert!(d.excludes("test1"));
    assert!(d.excludes("test2/x"));
    assert!(d.excludes("# not one: a pattern"));
    assert!(Dockerignore::parse("# only\n\n").expect("valid").is_empty());
}

#[test]
fn malformed_patterns_name_their_line() {
    let cases: &[(&str, usize, &str)] = &[
        ("ok\n# c\nsrc/[abc\n", 3, "src/[abc"),
        ("[", 1, "["),
        ("a\n!\n", 2, "!"),
        ("a\n  !  \n", 2, "!"),
        ("x\\", 1, "x\\"),
        ("[]a]", 1, "[]a]"),
        ("[-]", 1, "[-]"),
        ("[x-]", 1, "[x-]"),
        ("[-x]", 1, "[-x]"),
        ("[a-b-c]", 1, "[a-b-c]"),
        ("[^", 1, "[^"),
        ("[^bc", 1, "[^bc"),
        ("a[", 1, "a["),
        ("*.txt\nok/[*\n", 2, "ok/[*"),
    ];
    for (text, line, pattern) in cases {
        let err = Dockerignore::parse(text).expect_err(text);
        assert_eq!(err.line, *line, "{text:?}");
        assert_eq!(err.pattern, *pattern, "{text:?}");
    }
    let err = Dockerignore::parse("ok\nsrc/[abc\n").expect_err("unclosed");
    assert_eq!(
        err.to_string(),
        r#".dockerignore line 2: "src/[abc": syntax error in pattern (a [ without its ])"#
    );
}

#[test]
fn excluded_directories_are_walked_only_when_an_exception_may_take_something_back() {
    let d = ignore(&["build", "!build/version.txt"]);
    assert!(d.excludes("build"));
    assert!(d.may_take_back_under("build"));
    assert!(!d.excludes("build/version.txt"));
    assert!(d.excludes("build/out.bin"));
    assert!(!ignore(&["build"]).may_take_back_under("build"));
    assert!(!ignore(&["build", "node_modules", "!node_modules/x"]).may_take_back_under("build"));
    // A wildcard exception could match anywhere.
    assert!(ignore(&["build", "!**/*.txt"]).may_take_back_under("build"));
    assert!(ignore(&["build", "!other/*/x"]).may_take_back_under("build"));
    // A trailing glob is still a prefix.
    assert!(ignore(&["build", "!build/keep/**"]).may_take_back_under("build"));
    assert!(!ignore(&["build", "!other/**"]).may_take_back_under("build"));
}

#[test]
fn clean_is_gos() {
    for (input, want) in [
        ("a//b", "a/b"),
        ("a/./b/", "a/b"),
        ("a/../b", "b"),
        ("../a", "../a"),
        ("/../a", "/a"),
        ("./", "."),
        ("/", "/"),
        ("a/b/../../..", ".."),
    ] {
        assert_eq!(clean(input), want, "{input}");
    }
}
