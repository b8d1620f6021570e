"""Settings: file < environment < flags, and one clear line for anything wrong."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backfill.config import Remote, Settings, Storage, load, parse_duration, parse_out
from backfill.errors import UsageError
from backfill.keys import Granularity

ENV = {"GIO_CLIENT_ID": "env-client", "GIO_SECRET": "s3cr3t", "GIO_PROJECT_UID": "p",
       "GIO_AI": "env-ai"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "backfill.toml"
    path.write_text(text)
    return path


def test_example_config_loads(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "config.example.toml"
    s = load(example, {}, env={})
    assert s.types == ("visit", "page", "custom_event")
    assert s.max_wait == 1800
    assert s.credentials.base_url == "http://127.0.0.1:8931"


def test_flags_win_over_env_over_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'downloads = 3\ngranularity = "hour"\n[growingio]\nai = "file-ai"\n')
    s = load(path, {"downloads": 5, "granularity": None}, env=ENV)
    assert s.downloads == 5
    assert s.granularity is Granularity.HOUR
    assert s.credentials.ai == "env-ai"
    assert s.credentials.secret == "s3cr3t"
    assert "s3cr3t" not in repr(s)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("dowloads = 3\n", "unknown key 'dowloads'"),
        ('downloads = "eight"\n', "downloads must be an integer from 1 to 64, got 'eight'"),
        ("rate = 5\n", "rate must be a number of calls per second, at most 2"),
        ('types = ["visit", "clicks"]\n', "types must be a list of data types"),
        ("[growingio]\nsecret = 'x'\n", "growingio.secret does not belong in a file"),
        ("[growingio]\nregion = 'cn'\n", "unknown key growingio.region"),
        ("downloads = \n", "is not valid TOML"),
        ('layout = "{type}/{nope}"\n', "layout must be"),
        ('granularity = "hour"\nlayout = "{type}/dt={date}"\n', "needs {hour}"),
    ],
)
def test_bad_files_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(UsageError, match=None) as error:
        load(write(tmp_path, text), {}, env={})
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_an_unreadable_file_is_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(UsageError, match="cannot read config file"):
        load(path, {}, env={})


def test_missing_credentials_are_named_together() -> None:
    s = load(None, {}, env={"GIO_CLIENT_ID": "c"})
    with pytest.raises(UsageError, match="missing credentials: set GIO_AI, GIO_SECRET, "
                                         "GIO_PROJECT_UID"):
        s.credentials.require()
    ready = load(None, {}, env={"GIO_CLIENT_ID": "c", "GIO_AI": "a", "GIO_TOKEN": "t"})
    assert ready.credentials.require().token == "t"


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("30m", 1800),
                                               ("2h", 7200), ("1d", 86400), (45, 45)])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@settings(max_examples=200)
@given(st.text(max_size=40))
def test_any_config_text_is_loaded_or_refused_in_one_line(text: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "c.toml"
        path.write_text(text, encoding="utf-8")
        try:
            load(path, {}, env={})
        except UsageError as exc:
            assert "\n" not in str(exc).strip() or "TOML" in str(exc)


def test_out_takes_a_folder_a_file_url_or_a_bucket() -> None:
    assert parse_out("data") == Path("data")
    assert parse_out("file:///srv/gio") == Path("/srv/gio")
    assert parse_out("file://localhost/srv/gio") == Path("/srv/gio")
    assert parse_out("s3://gio-raw/events/") == Remote("s3://gio-raw/events", "s3", "gio-raw",
                                                       "events")
    assert parse_out("gs://lake") == Remote("gs://lake", "gs", "lake", "")
    abfs = parse_out("abfs://raw@acct.dfs.core.windows.net/gio")
    assert isinstance(abfs, Remote) and (abfs.kind, abfs.bucket, abfs.prefix) == (
        "az", "raw", "gio")
    for url in ("https://host/p", "ftp://host/p"):
        with pytest.raises(UsageError, match="outputs are not supported"):
            parse_out(url)
    assert isinstance(parse_out("gs://my_lake/raw"), Remote)  # GCS names take underscores
    for url in ("s3://", "s3://UPPER/x", "s3://b/x", "s3://my_lake/x", "s3://bkt/a/../b",
                "s3://bkt/a?x=1"):
        with pytest.raises(UsageError, match=r"bucket|plain path"):
            parse_out(url)


def test_a_remote_output_keeps_its_state_in_the_users_state_dir(tmp_path: Path) -> None:
    env = {"XDG_STATE_HOME": str(tmp_path)}
    settings = load(None, {"out": "s3://gio-raw/events"}, env=env)
    other = load(None, {"out": "s3://gio-raw/other"}, env=env)
    assert settings.state_folder.parent == tmp_path / "backfill"
    assert settings.state_folder.name.startswith("s3-gio-raw-events-")
    assert settings.state_folder != other.state_folder
    given = load(None, {"out": "s3://gio-raw/events", "state_dir": str(tmp_path / "st")}, env=env)
    assert given.state_folder == tmp_path / "st"
    assert load(None, {"out": str(tmp_path)}, env=env).state_folder == tmp_path / ".backfill"


def test_the_storage_table_takes_no_credentials(tmp_path: Path) -> None:
    path = tmp_path / "b.toml"
    path.write_text('out = "s3://gio-raw/x"\n[storage]\nendpoint = "https://oss-cn-hangzhou'
                    '.aliyuncs.com"\nregion = "oss-cn-hangzhou"\nvirtual_hosted_style = true\n')
    assert load(path, {}, env={}).storage == Storage(
        "https://oss-cn-hangzhou.aliyuncs.com", "oss-cn-hangzhou", True)
    path.write_text('[storage]\naws_secret_access_key = "x"\n')
    with pytest.raises(UsageError, match="credentials come from the environment"):
        load(path, {}, env={})
    path.write_text('[storage]\nendpoint = "oss.example.com"\n')
    with pytest.raises(UsageError, match="must be an http"):
        load(path, {}, env={})


PROJECTS = '''
downloads = 4
[[projects]]
name = "acme"
out = "s3://lake/acme"
types = ["visit"]

[[projects]]
name = "beta"
env_prefix = "BETA_"
out = "data/beta"
downloads = 12
'''


def test_a_project_brings_its_settings_and_its_own_credentials(tmp_path: Path) -> None:
    path = write(tmp_path, PROJECTS)
    env = {"GIO_CLIENT_ID": "top", "GIO_SECRET": "top-key", "ACME_GIO_CLIENT_ID": "acme-id",
           "ACME_GIO_TOKEN": "acme-token", "BETA_CLIENT_ID": "beta-id", "XDG_STATE_HOME": "/s"}
    acme = load(path, {}, env=env, project="acme")
    assert str(acme.out) == "s3://lake/acme" and acme.types == ("visit",) and acme.downloads == 4
    assert acme.credentials.client_id == "acme-id" and acme.credentials.token == "acme-token"
    assert acme.credentials.secret == ""  # the top level's key is not the project's
    beta = load(path, {"downloads": 2}, env=env, project="beta")
    # flags still win; a folder the file names is relative to the file
    assert beta.out == tmp_path / "data/beta" and beta.downloads == 2
    assert beta.credentials.client_id == "beta-id"
    assert load(path, {}, env=env).credentials.client_id == "top"  # no project: top level
    with pytest.raises(UsageError, match=r"no project 'gamma' .*acme, beta"):
        load(path, {}, env=env, project="gamma")


@pytest.mark.parametrize(("entry", "message"), [
    ('[[projects]]\nout = "x"\n', "needs a name"),
    ('[[projects]]\nname = "a"\nenv_prefix = "lower_"\n', "env_prefix must be like"),
    ('[[projects]]\nname = "a"\nsecret = "x"\n', "credentials come from A_GIO_CLIENT_ID"),
    ('[[projects]]\nname = "a"\ndownloads = 0\n', "downloads must be"),
])
def test_a_broken_project_is_named(tmp_path: Path, entry: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        load(write(tmp_path, entry), {}, env={})


def test_the_readmes_projects_load(tmp_path: Path) -> None:
    import re

    page = (Path(__file__).resolve().parents[2] / "docs" / "scale-out.md").read_text()
    section = page.split("**Many projects in one config.**", 1)[1]
    block = re.search(r"```toml\n(.*?)```", section, flags=re.S)
    assert block, "the [[projects]] example of docs/scale-out.md is gone"
    path = write(tmp_path, block[1])
    env = {"BETA_GIO_CLIENT_ID": "beta-id", "XDG_STATE_HOME": str(tmp_path)}
    beta = load(path, {}, env=env, project="beta")
    assert beta.granularity is Granularity.DAY and beta.credentials.client_id == "beta-id"
    assert str(load(path, {}, env=env, project="acme").out) == "s3://my-lake/acme"


def test_the_example_config_documents_every_setting() -> None:
    import re

    from backfill.config import option_names

    example = (Path(__file__).resolve().parents[2] / "config.example.toml").read_text()
    documented, table = set(), ""
    for line in example.splitlines():  # a key under [iceberg] is the setting iceberg_<key>
        if header := re.match(r"^#? ?\[+([a-z_]+)\]+", line):
            table = header[1]
        elif key := re.match(r"^#? ?([a-z_]+) = ", line):
            documented |= {key[1], f"{table}_{key[1]}"}
    assert set(option_names()) - documented == set()


def test_the_iceberg_table_of_the_file_sets_its_settings_and_refuses_strangers(
        tmp_path: Path) -> None:
    path = write(tmp_path, '[iceberg]\ncatalog = "lake"\nnamespace = "gio_raw"\n')
    s = load(path, {}, env={})
    assert (s.iceberg_catalog, s.iceberg_namespace) == ("lake", "gio_raw")
    assert s.sources["iceberg_catalog"] == str(path)
    assert load(path, {"iceberg_catalog": "other"}, env={}).iceberg_catalog == "other"
    assert load(None, {}, env={}).iceberg_namespace == "growingio"
    with pytest.raises(UsageError, match=r"unknown key iceberg.uri \(known: catalog, "
                                         r"namespace\)"):
        load(write(tmp_path, '[iceberg]\nuri = "http://x"\n'), {}, env={})
    with pytest.raises(UsageError, match=r"iceberg\.namespace must be a namespace"):
        load(write(tmp_path, '[iceberg]\nnamespace = ""\n'), {}, env={})


def test_sizes_take_units_and_the_example_means_what_it_says(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "config.example.toml"
    s = load(example, {}, env={})
    assert (s.min_speed, s.min_speed_time, s.max_part_size) == (4096, 60, 128 << 20)
    assert load(None, {"max_part_size": "1GB", "min_speed": 0}, env={}).max_part_size == 10**9
    with pytest.raises(UsageError, match="--max-part-size must be a size such as 4KiB"):
        load(None, {"max_part_size": "lots"}, env={})


@pytest.mark.parametrize("shard", ["1/2", "2/2", "3/4", "4/4"])
def test_every_shard_with_only_a_private_key_is_refused(shard: str) -> None:
    from backfill.config import check_token_rule

    settings = load(None, {"shard": shard}, env=ENV)  # GIO_SECRET, no GIO_TOKEN
    with pytest.raises(UsageError, match=f"--shard {shard} with GIO_SECRET"):
        check_token_rule(settings)
    check_token_rule(load(None, {"shard": shard}, env={**ENV, "GIO_TOKEN": "console"}))
    check_token_rule(load(None, {"shard": shard, "single_minter": True}, env=ENV))
    check_token_rule(load(None, {"shard": "1/1"}, env=ENV))  # one shard mints alone


def test_the_config_file_is_found_in_the_documented_order(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    from backfill.config import config_file

    monkeypatch.chdir(tmp_path)
    xdg = tmp_path / "xdg"
    (xdg / "backfill").mkdir(parents=True)
    (xdg / "backfill" / "config.toml").write_text('out = "from-xdg"\n')
    env = {"XDG_CONFIG_HOME": str(xdg)}
    assert config_file(None, env) == xdg / "backfill" / "config.toml"
    assert load(None, {}, env=env).out == xdg / "backfill" / "from-xdg"  # relative to it
    (tmp_path / "backfill.toml").write_text('out = "from-cwd"\n')
    assert config_file(None, env) == Path("backfill.toml")
    chosen = tmp_path / "chosen.toml"
    chosen.write_text('out = "from-env"\n')
    assert config_file(None, {**env, "BACKFILL_CONFIG": str(chosen)}) == chosen
    assert config_file(Path("flag.toml"), {**env, "BACKFILL_CONFIG": str(chosen)}) == Path(
        "flag.toml")
    # A flag's folder stays relative to where the command runs.
    assert load(None, {"out": "here"}, env=env).out == Path("here")


def test_a_project_inherits_the_base_url_and_keeps_its_secrets() -> None:
    from backfill.config import Project

    env = {"GIO_BASE_URL": "http://127.0.0.1:8931", "GIO_SECRET": "top-secret",
           "ACME_GIO_CLIENT_ID": "acme", "ACME_GIO_SECRET": "acme-secret"}
    mapped = Project("acme", "ACME_GIO_").environ(env)
    assert mapped["GIO_BASE_URL"] == "http://127.0.0.1:8931"
    assert mapped["GIO_SECRET"] == "acme-secret" and mapped["GIO_CLIENT_ID"] == "acme"
    own = Project("beta", "BETA_GIO_").environ({**env, "BETA_GIO_BASE_URL": "https://b"})
    assert own["GIO_BASE_URL"] == "https://b" and "GIO_SECRET" not in own


def test_each_setting_is_declared_once_and_everything_derives_from_it() -> None:
    """The file's keys, the flags, config show and the integrations read one declaration:
    a setting added there appears everywhere, with no list of names kept by hand."""
    from typer.testing import CliRunner

    from backfill.cli import app
    from backfill.config import Scope, declared, default, flag, parse_flag, written

    run_help = CliRunner().invoke(app, ["run", "--help"], terminal_width=200).output
    status_help = CliRunner().invoke(app, ["status", "--help"], terminal_width=200).output
    for name, what in declared().items():
        assert (flag(name) in run_help) is (what.scope is not Scope.STATUS), name
        assert (flag(name) in status_help) is (what.scope is not Scope.FETCH), name
        # What config show writes, the parser reads back as the same value.
        if default(name) is not None and not isinstance(default(name), tuple):
            assert parse_flag(name, written(name, default(name))) == default(name), name
    assert Settings().max_part_size == 128 << 20  # twice GrowingIO's 64 MB parts
    trigger = {name for name, what in declared().items() if what.trigger}
    assert {"poll_interval", "rate", "api"} <= trigger
    assert not trigger & {"out", "state_dir", "shard", "single_minter"}
