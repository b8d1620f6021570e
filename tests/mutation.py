"""A mutation check of the promises: plant one realistic bug at a time, run the tests that
should notice it, and count the bugs they catch. A tool for developers, not part of CI.

    python tests/mutation.py            # every mutant
    python tests/mutation.py lease      # the mutants whose name contains "lease"

Each mutant works on a copy of the tree (the checkout is never touched), with the copy
first on PYTHONPATH, so the CLI runs that tests start import the mutant too. A mutant whose
text is no longer in its file is reported as stale: keep the list in step with the code.
Exit status: 0 when every mutant was caught, 1 otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    """pytest arguments: the tests that name the promise."""


M = Mutant
MUTANTS = [
    # --- the API budget and its answers ---------------------------------------------------
    M("rate limit: calls not spaced out", "backfill/net/throttle.py",
      "self._last + self._gap - now)", "self._last - now)",
      ("tests/unit/test_http.py::test_never_more_than_two_calls_in_any_second",
       "tests/e2e/test_run.py::test_the_api_is_treated_with_care")),
    M("Retry-After ignored (429 and 5xx alike)", "backfill/net/exchange.py",
      "                    self.gate.hold(wait)\n", "                    self.gate.hold(None)\n",
      ("tests/unit/test_http.py",
       "tests/e2e/test_survive_faults.py::test_429_bursts_are_waited_out",
       "tests/e2e/test_hostile.py::test_retry_after_on_503_holds_every_call_of_the_run")),
    M("Retry-After holds only the call that got it, not those queued", "backfill/net/throttle.py",
      "        return max(self._held_until - now, self._last + self._gap - now)",
      "        return self._last + self._gap - now",
      ("tests/unit/test_http.py::"
       "test_a_retry_after_holds_every_call_of_the_run_even_one_queued_before_it",)),
    M("one key's unusable answers judged an outage of the service", "backfill/net/outage.py",
      "        if len(self._unusable) < OUTAGE_AFTER and not self.down:\n"
      "            return False\n", "",
      ("tests/unit/test_outage.py",
       "tests/e2e/test_hostile.py::test_a_page_for_one_key_is_that_keys_problem_not_an_outage")),
    M("lifecycle: a RUNNING job asked again at once", "backfill/engine/lifecycle.py",
      '    return _after(life, decision.delay, now, job=status != "NOT_EXISTS", '
      'seconds=job_seconds)',
      "    return Step(life, Ask(), job_seconds)",
      ("tests/unit/test_lifecycle.py", "tests/unit/test_scheduler_fakes.py")),
    M("lifecycle: expired links wait a backoff", "backfill/engine/lifecycle.py",
      "    if expired:\n        return Step(life, Ask())\n", "",
      ("tests/unit/test_lifecycle.py", "tests/unit/test_scheduler_fakes.py")),
    M("lifecycle: a key due at the start cut at the run's deadline",
      "backfill/engine/lifecycle.py",
      "        deadline = max(deadline, now + settings.max_wait)", "        deadline = deadline",
      ("tests/unit/test_lifecycle.py",)),
    M("trigger: the keys a worker just asked are asked again at once",
      "backfill/engine/ready.py",
      "        key: (lifecycle.resume(key, settings, now, deadline, asked_at=asked_at)",
      "        key: (lifecycle.start(key, settings, now, deadline)",
      ("tests/unit/test_scheduler_fakes.py",)),
    M("errors: a bug in one task passed off as the user's error", "backfill/errors.py",
      "    if not all(isinstance(e, BackfillError | KeyboardInterrupt) for e in leaves):\n"
      "        return error\n", "",
      ("tests/unit/test_errors.py",)),
    M("trap links of a RUNNING answer kept", "backfill/growingio/api.py",
      'if status != "FINISHED":', 'if status not in ("FINISHED", "RUNNING"):',
      ("tests/e2e/test_run.py::test_the_api_is_treated_with_care", "tests/unit/test_policy.py")),
    M("a type absent from the answer taken for an empty unit", "backfill/growingio/api.py",
      "        absent = tuple(t for t in types if raw.get(t) is None)", "        absent = ()",
      ("tests/e2e/test_hostile.py::test_a_type_absent_from_the_answer_is_asked_for_alone",)),
    M("--max-wait: no last look", "backfill/engine/policy.py",
      "    return remaining, True, False", "    return wait, last_look, True",
      ("tests/unit/test_policy.py", "tests/e2e/test_run.py")),
    # --- tokens -----------------------------------------------------------------------------
    M("token rule: only shard 1 checked", "backfill/config.py",
      "if shard is None or shard.n == 1 or creds.token",
      "if shard is None or shard.k != 1 or creds.token",
      ("tests/unit/test_config.py", "tests/e2e/test_shard.py")),
    M("token endpoint's portal page retried by every key", "backfill/growingio/auth.py",
      '                raise TokenError(f"{failed}: {not_json(resp)}")',
      '                raise RetryableError(f"{failed}: {not_json(resp)}")',
      ("tests/e2e/test_hostile.py::test_a_portal_at_the_token_endpoint_is_judged_once",)),
    M("token refusal: the server's words dropped", "backfill/growingio/auth.py",
      "(HTTP {status}: {self._said(text)}): ", "(HTTP {status}): ",
      ("tests/e2e/test_hostile.py::test_a_skewed_clock_is_named_with_the_servers_message",
       "tests/e2e/test_cli_run.py")),
    M("emulator: HMAC not checked", "backfill/emulator/app.py",
      'if not compare_digest(params["auth"].encode(), expected.encode()):', "if False:",
      ("tests/e2e/test_emulator_auth.py", "tests/e2e/test_cli_run.py")),
    # --- the network: links, redirects, bodies, outages -----------------------------------
    M("a link's scheme not checked", "backfill/transfer/download.py",
      "        if problem := scheme_problem(link):", "        if problem := None:",
      ("tests/e2e/test_hostile.py::test_one_bad_link_fails_only_its_key",)),
    M("a bad redirect judged an outage", "backfill/net/exchange.py",
      "                if failure.kind is Kind.REQUEST:", "                if False:",
      ("tests/e2e/test_hostile.py::test_one_bad_link_fails_only_its_key",)),
    M("API redirects followed with the credentials", "backfill/growingio/api.py",
      'allow_redirects=False), proxy=proxy, what="the export API") as resp',
      '), proxy=proxy, what="the export API") as resp',
      ("tests/e2e/test_hostile.py::test_api_calls_never_follow_a_redirect_to_another_origin",)),
    M("no low-speed abort", "backfill/transfer/download.py",
      "if limits.min_speed and clock.monotonic() >= judge_at and broken is None:",
      "if False:",
      ("tests/e2e/test_hostile.py::test_a_trickling_body_is_cut_and_fetched_again",)),
    M("no size ceiling", "backfill/transfer/download.py",
      "if progress.offset + size + len(chunk) > ceiling:", "if False:",
      ("tests/e2e/test_hostile.py::test_an_endless_body_is_cut_at_the_ceiling_and_fetched_again",)),
    M("a broken body's last bytes dropped", "backfill/transfer/download.py",
      "if batch and (end or stopping or size >= self._chunk):",
      "if batch and (end or size >= self._chunk):",
      ("tests/e2e/test_run.py::test_an_expired_link_is_refreshed_and_the_part_resumes",)),
    M("the gzip framing checked only for .gz names", "backfill/transfer/integrity.py",
      "    return not name.endswith(TABLE_FILE_SUFFIXES)", '    return name.endswith(".gz")',
      ("tests/e2e/test_download.py::test_the_framing_check_refuses_what_is_not_gzip",)),
    # --- what a run reports -----------------------------------------------------------------
    M("metrics: a failed run replaces the last success", "backfill/observe/metrics.py",
      "success = ended if outcome.exit_code == 0 else previous_success",
      "success = ended",
      ("tests/e2e/test_observe.py::test_the_metrics_file_says_what_the_run_did_and_a_failure"
       "_keeps_the_last_success",)),
    M("metrics: a push replaces the gateway's group (push, not pushadd)",
      "backfill/observe/metrics.py",
      "    from prometheus_client import pushadd_to_gateway\n",
      "    from prometheus_client import push_to_gateway as pushadd_to_gateway\n",
      ("tests/e2e/test_observe.py::test_a_push_never_replaces_the_last_success_with_a_failure",)),
    M("watermark: a hole does not hold it back", "backfill/state/freshness.py",
      "while key is not None and (key.name in complete or key.name in gone):",
      "while key is not None and (key.name in complete or key.name in gone or Key("
      "key.start + granularity.step, granularity).name in complete):",
      ("tests/unit/test_observe.py", "tests/e2e/test_observe.py::test_the_metrics_file_says"
       "_what_the_run_did_and_a_failure_keeps_the_last_success")),
    M("lineage: an unreachable endpoint is waited on without a bound",
      "backfill/observe/lineage.py",
      "    if not done.wait(timeout):", "    if not done.wait(None):",
      ("tests/unit/test_observe.py::test_a_lineage_endpoint_that_hangs_is_left_behind_in"
       "_bounded_time",)),
    M("delta: a column a unit brings not added to the table",
      "backfill/destination/tables/delta.py",
      "        if missing := [f for f in target if f.name not in have]:",
      "        if missing := []:",
      ("tests/e2e/test_tables.py::test_units_that_create_a_table_at_once_keep_every_column",
       "tests/e2e/test_tables.py::test_schema_drift_keeps_the_new_column_and_nulls_the_missing"
       "_one")),
    M("iceberg: a unit's snapshot keeps the partition's earlier files",
      "backfill/destination/tables/iceberg.py",
      "                for data_file in current:\n", "                for data_file in []:\n",
      ("tests/e2e/test_tables.py::test_iceberg_snapshot_per_unit_a_rerun_adds_none_and_force"
       "_replaces_its_own",)),
    M("iceberg: done units not read from the snapshots", "backfill/destination/tables/iceberg.py",
      "            if isinstance(document, dict):\n                found.append(document)",
      "            pass",
      ("tests/e2e/test_tables.py::test_a_fresh_runner_reads_the_table_and_makes_no_call",)),
    M("iceberg: a lost race not prepared again", "backfill/destination/tables/iceberg.py",
      "        except (CommitFailedException, ValidationException) as exc:",
      "        except ZeroDivisionError as exc:",
      ("tests/e2e/test_tables.py::test_two_shards_committing_to_one_iceberg_table_lose_nothing",)),
    M("a library run leaves the default signal handlers", "backfill/engine/stops.py",
      "            if handler is not None:\n                signal.signal(signum, handler)\n\n",
      "            pass\n\n",
      ("tests/e2e/test_library.py::test_a_library_run_gives_the_hosts_signal_handlers_back",)),
    M("links decoded in transit", "backfill/transfer/download.py", "auto_decompress=False,", "",
      ("tests/e2e/test_hostile.py::"
       "test_a_part_stored_with_content_encoding_gzip_lands_byte_identical",)),
    M("outage after one miss more", "backfill/net/outage.py",
      "        return self._misses >= OUTAGE_AFTER", "        return self._misses > OUTAGE_AFTER",
      ("tests/unit/test_outage.py", "tests/e2e/test_outage.py")),
    M("NO_PROXY ignored", "backfill/net/proxy.py",
      "        if any(_bypasses(entry, parts.hostname.lower(), port) for entry in self.no_proxy):",
      "        if False:", ("tests/e2e/test_proxy.py",)),
    M("proxy variables: uppercase wins", "backfill/net/proxy.py",
      "    for variant in (name, name.upper()):", "    for variant in (name.upper(), name):",
      ("tests/e2e/test_proxy.py",)),
    # --- the bytes: resume, integrity ----------------------------------------------------------
    M("resume from the file's size, not the recorded offset", "backfill/destination/local.py",
      "                with temp.open(\"r+b\") as f:\n"
      "                    f.truncate(progress.offset)",
      "                progress.offset = temp.stat().st_size\n"
      "                with temp.open(\"r+b\") as f:\n"
      "                    f.truncate(progress.offset)",
      ("tests/e2e/test_download.py::test_a_new_process_resumes_from_the_recorded_checkpoint",)),
    M("resume: the ETag not compared", "backfill/transfer/download.py",
      "            if match is None or int(match[1]) != progress.offset or (\n"
      "                    progress.etag and etag != progress.etag):",
      "            if match is None or int(match[1]) != progress.offset:",
      ("tests/e2e/test_download.py::test_a_resume_onto_another_object_starts_over",)),
    M("resume: the Content-Range start not compared", "backfill/transfer/download.py",
      "            if match is None or int(match[1]) != progress.offset or (",
      "            if match is None or (",
      ("tests/e2e/test_download.py::test_a_range_answer_that_starts_elsewhere_starts_over",)),
    M("a signed link in a broken download's message", "backfill/transfer/download.py",
      'what=lambda: f"download of {shown} broke off',
      'what=lambda: f"download of {link} broke off',
      ("tests/e2e/test_survive_faults.py::test_a_key_failed_by_a_broken_download_shows_no_signed_link",)),
    M("a signed source in the manifest", "backfill/engine/scheduler.py",
      "            links = {redact(link): link for link in answer.links.get(data_type, [])}",
      "            links = {link: link for link in answer.links.get(data_type, [])}",
      ("tests/e2e/test_run.py::test_every_part_arrives_byte_identical_with_markers",)),
    M("a done part of another size trusted", "backfill/engine/scheduler.py",
      "        return stored is not None and stored.size == record.size",
      "        return stored is not None",
      ("tests/e2e/test_object_store.py::test_a_done_part_of_another_size_is_fetched_again",)),
    # --- the commit order and the destination as the truth ------------------------------------
    M("commit order, folder: _SUCCESS before the manifest", "backfill/destination/manifest.py",
      "    _atomic_write(folder / MANIFEST, manifest)\n    _atomic_write(folder / MARKER, b\"\")",
      "    _atomic_write(folder / MARKER, b\"\")\n    _atomic_write(folder / MANIFEST, manifest)",
      ("tests/e2e/test_object_store.py::test_every_unit_commits_parts_then_manifest_then_marker",)),
    M("commit order, bucket: _SUCCESS before the manifest",
      "backfill/destination/object_store.py",
      '        await self._put(f"{folder}/{MANIFEST}", manifest, content_type="application/json")\n'
      '        await self._put(f"{folder}/{MARKER}", b"", content_type="text/plain")',
      '        await self._put(f"{folder}/{MARKER}", b"", content_type="text/plain")\n'
      '        await self._put(f"{folder}/{MANIFEST}", manifest, content_type="application/json")',
      ("tests/e2e/test_object_store.py::test_every_unit_commits_parts_then_manifest_then_marker",)),
    M("no unpublish before a rewrite", "backfill/engine/scheduler.py",
      "            await self._dest.unpublish(str(folder))", "            pass",
      ("tests/e2e/test_object_store.py::"
       "test_a_unit_fetched_again_loses_its_marker_before_any_part_is_written",)),
    M("reconcile: _SUCCESS without a manifest adopted", "backfill/state/reconcile.py",
      "    return files is not None and MARKER in files and MANIFEST in files",
      "    return files is not None and MARKER in files",
      ("tests/e2e/test_object_store.py::"
       "test_a_marker_without_its_manifest_is_not_taken_for_a_done_unit",)),
    M("verify, bucket: sizes not compared", "backfill/destination/object_store.py",
      "        if listed.size != part.size:", "        if False:",
      ("tests/e2e/test_object_store.py::test_verify_compares_every_part_size_with_its_manifest",)),
    M("verify, folder: sizes not compared", "backfill/destination/local.py",
      "lambda: check_part(file, part.size, part.md5 or None, str(file), deep=deep))",
      "lambda: check_part(file, -1, part.md5 or None, str(file), deep=deep))",
      ("tests/e2e/test_object_store.py::test_verify_compares_every_part_size_with_its_manifest",)),
    M("a damaged state not set aside", "backfill/state/store.py",
      "            self.set_aside = self._put_aside(damage.reason)",
      "            raise OutputError(damage.reason) from None",
      ("tests/e2e/test_object_store.py::"
       "test_a_damaged_cache_is_set_aside_and_rebuilt_from_the_markers",)),
    M("migrations: one edited in place instead of added", "backfill/state/store.py",
      "        done INTEGER NOT NULL DEFAULT 0, offset INTEGER NOT NULL DEFAULT 0, etag TEXT,\n"
      "        PRIMARY KEY (api, key, data_type, idx)\n    );\n    \"\"\",\n"
      "    \"ALTER TABLE parts ADD COLUMN stored_etag TEXT\",\n)",
      "        done INTEGER NOT NULL DEFAULT 0, offset INTEGER NOT NULL DEFAULT 0, etag TEXT,\n"
      "        stored_etag TEXT,\n        PRIMARY KEY (api, key, data_type, idx)\n    );\n"
      "    \"\"\",\n)",
      ("tests/unit/test_store.py",)),
    # --- the lease -------------------------------------------------------------------------------
    M("lease: a live one taken over", "backfill/destination/object_store.py",
      "            if datetime.fromisoformat(holder.expires) > _now():", "            if False:",
      ("tests/e2e/test_object_store.py::test_a_second_writer_is_refused_by_the_lease",
       "tests/e2e/test_object_store.py::test_a_live_lease_refuses_with_its_holder")),
    M("lease: never renewed", "backfill/destination/object_store.py",
      "            await anyio.sleep(self._seconds / 3)", "            await anyio.sleep_forever()",
      ("tests/e2e/test_object_store.py::test_a_second_writer_is_refused_by_the_lease",)),
    M("a stop leaves the upload open", "backfill/destination/object_store.py",
      "                stop.set()", "                upload.cancel()",
      ("tests/e2e/test_object_store.py::test_a_stop_mid_upload_aborts_every_upload_in_flight",)),
    M("lease: conditional writes trusted, not checked", "backfill/destination/object_store.py",
      "        if self._dest.conditional == \"refused\":\n            return False\n        try:",
      "        if True:\n            return True\n        try:",
      ("tests/e2e/test_stores.py::"
       "test_a_store_without_conditional_writes_takes_parts_but_not_delta",)),
    M("lease: renewed without If-Match", "backfill/destination/object_store.py",
      'mode=None if self._dest.conditional == "refused" else {"e_tag": self._etag})',
      "mode=None)",
      ("tests/e2e/test_stores.py::test_the_lease_is_renewed_as_the_store_allows",)),
    # --- the stores ------------------------------------------------------------------------
    M("virtual-hosted store: endpoint without the bucket", "backfill/destination/credentials.py",
      "    if not (endpoint and settings.storage.virtual_hosted_style",
      "    if True or not (endpoint and settings.storage.virtual_hosted_style",
      ("tests/e2e/test_stores.py::test_a_delta_table_on_the_store_as_its_settings_say",)),
    M("install line: the index whatever the origin", "backfill/install.py",
      "    origin = _origin()", "    origin = None",
      ("tests/unit/test_install.py",)),
    # --- keys and shards ---------------------------------------------------------------------
    M("Beijing time: keys from UTC wall time", "backfill/keys.py",
      "    local = moment.astimezone(BEIJING)",
      "    local = moment.astimezone(timezone.utc).replace(tzinfo=BEIJING)",
      ("tests/unit/test_keys.py", "tests/unit/test_policy.py")),
    M("shards overlap", "backfill/keys.py", "        return number % self.n == self.k - 1",
      "        return number % self.n in (self.k - 1, self.k % self.n)",
      ("tests/e2e/test_shard.py",)),
]


def main(argv: list[str]) -> int:
    wanted = [m for m in MUTANTS if not argv or any(a in m.name for a in argv)]
    caught = survived = stale = 0
    with tempfile.TemporaryDirectory(prefix="backfill-mutants-") as scratch:
        for mutant in wanted:
            copy = Path(scratch) / "tree"
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(
                ".git", ".venv", "__pycache__", "*.egg-info", ".mypy_cache", ".ruff_cache"))
            target = copy / mutant.file
            text = target.read_text()
            if text.count(mutant.old) != 1:
                stale += 1
                print(f"STALE     {mutant.name}: its text is not once in {mutant.file}")
                continue
            target.write_text(text.replace(mutant.old, mutant.new))
            started = time.monotonic()
            env = {**os.environ, "PYTHONPATH": str(copy)}
            result = subprocess.run(
                # One worker: the first failing test ends the check (-x), with exit 1.
                [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-n",
                 "0", *mutant.tests], cwd=copy, env=env, capture_output=True, text=True,
                check=False)
            seconds = time.monotonic() - started
            if result.returncode == 0:
                survived += 1
                print(f"SURVIVED  {mutant.name} ({seconds:.0f} s)")
            elif result.returncode == 1:  # a test failed: the bug was caught
                caught += 1
                print(f"caught    {mutant.name} ({seconds:.0f} s)")
            else:  # no test ran (a test's name changed, an import broke): not a catch
                stale += 1
                print(f"BROKEN    {mutant.name}: pytest exited {result.returncode}\n"
                      f"{result.stdout[-1000:]}")
    total = caught + survived
    print(f"\n{caught} of {total} mutants caught" + (f", {stale} stale" if stale else ""))
    return 0 if survived == 0 and stale == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
