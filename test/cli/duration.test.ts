/**
 * Durations of the command line and of rules files: one limit (365 days) refused with one line
 * and exit 2, and a timer that waits as long as asked beyond setTimeout's 2^31-1 ms.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { MAX_DURATION_MS, parseDuration, setLongTimeout } from '../../src/cli/duration.js';
import { checkDuration } from '../../src/rules/load.js';
import { UsageError } from '../../src/errors.js';

const bin = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'bin', 'netmangle');

test('parseDuration: up to 365 days; longer, zero and malformed durations are usage errors naming the limit', () => {
  assert.equal(parseDuration('597h', '--for'), 597 * 3_600_000);
  assert.equal(parseDuration('8760h', '--for'), MAX_DURATION_MS);
  assert.throws(() => parseDuration('8760h1ms', '--for'), (e: unknown) => e instanceof UsageError && /--for: "8760h1ms" is longer than the limit of 365 days \(8760h; docs\/limits\.md\)/.test(e.message));
  assert.throws(() => parseDuration('0s', '--for'), (e: unknown) => e instanceof UsageError && /no time at all/.test(e.message));
  assert.throws(() => parseDuration('5 days', '--for'), UsageError);
});

test('a rules file has the same limit, for bare seconds too', () => {
  assert.equal(checkDuration('8760h', 'for:'), MAX_DURATION_MS * 1e6);
  assert.throws(() => checkDuration('8761h', 'for:'), /for: "8761h" is longer than the limit of 365 days/);
  assert.throws(() => checkDuration(365 * 86400 + 1, 'for:'), /longer than the limit of 365 days/);
  assert.equal(checkDuration(1.5, 'for:'), 1.5e9);
});

test('setLongTimeout waits beyond 2^31-1 ms instead of firing at once', async (t) => {
  t.mock.timers.enable({ apis: ['setTimeout'] });
  // performance.now is not mocked: the chained wait reads it, so move it with the mocked clock.
  let now = 0;
  t.mock.method(performance, 'now', () => now);
  let fired = false;
  setLongTimeout(() => (fired = true), 597 * 3_600_000);
  const step = (ms: number) => {
    now += ms;
    t.mock.timers.tick(ms);
  };
  step(2 ** 31 - 1);
  assert.equal(fired, false, 'fired after 24.8 days of 24.9');
  step(597 * 3_600_000 - (2 ** 31 - 1) - 1);
  assert.equal(fired, false, 'fired 1 ms early');
  step(1);
  assert.equal(fired, true);
});

test('CLI: --for beyond the limit is refused before anything happens, one line, exit 2', () => {
  for (const args of [
    ['run', '--dev', 'lo', '--hook', 'egress', 'ip => drop', '--for', '9000h'],
    ['replay', '--hook', 'egress', 'ip => drop', join(dirname(bin), '..', 'test', 'fixtures', 'pcap', 'tcpdump-ns.pcap'), '-o', '/dev/null', '--for', '9000h'],
    ['run', '--dev', 'lo', '--hook', 'egress', 'ip => drop', '--start-after', '9000h'],
  ]) {
    const r = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8' });
    assert.equal(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, /^netmangle: .*9000h.* longer than the limit of 365 days \(8760h; docs\/limits\.md\)\n$/, args.join(' '));
    assert.doesNotMatch(r.stdout, /attached/);
  }
});
