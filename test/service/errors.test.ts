/**
 * How the service turns what an operation threw into an HTTP error, for the cases a test
 * cannot easily make the kernel produce (a verifier refusal of a generated program), and the
 * Prometheus escaping of label values.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { HookBusyError, NetmangleError, NotFoundError, ProgramRejectedError, UsageError } from '../../src/errors.js';
import { RuleError } from '../../src/rules/errors.js';
import { HttpError, toHttpError } from '../../src/service/errors.js';
import { renderMetrics } from '../../src/service/metrics.js';
import { fieldPath } from '../../src/service/validation.js';

test('errors: each kind of failure gets its status, the first line of its message and its hint', () => {
  const rejected = toHttpError(new ProgramRejectedError("the kernel's verifier rejected the program for \"x\" (a netmangle bug):\n    R1 invalid mem access\n    processed 12 insns", 'LOG', { hint: 'the whole log is in /tmp/x.log' }));
  assert.deepEqual(rejected.body(), { error: "the kernel's verifier rejected the program for \"x\" (a netmangle bug): | R1 invalid mem access | processed 12 insns", hint: 'the whole log is in /tmp/x.log' });
  assert.equal(rejected.status, 422);
  assert.equal(toHttpError(new NotFoundError('no interface eth9 in namespace h1', { hint: 'list them' })).status, 404);
  assert.equal(toHttpError(new HookBusyError('eth0 already holds XDP program id 3')).status, 409);
  const usage = toHttpError(new UsageError('--per-connection counts packets per connection for --first, --after and --every, and none is given'));
  assert.deepEqual([usage.status, usage.message], [400, 'perConnection counts packets per connection for first, after and every, and none is given']);
  const rule = toHttpError(new RuleError('300 does not fit ip.ttl', 'ip.ttl == 1 => set ip.ttl = 300', { start: 28, end: 31 }), () => 'rules[2]');
  assert.deepEqual([rule.status, rule.body()], [422, { error: '300 does not fit ip.ttl', at: { field: 'rules[2]', column: 29 } }]);
  assert.equal(toHttpError(new NetmangleError('cannot attach: EPERM')).status, 500);
  const bug = toHttpError(new TypeError('x is undefined'));
  assert.deepEqual([bug.status, bug.message], [500, 'internal error: x is undefined (please report this)']);
  const same = new HttpError(409, 'taken');
  assert.equal(toHttpError(same), same);
  assert.deepEqual(new HttpError(400, 'bad', undefined, { field: 'hook' }).within('[3]').at, { field: '[3].hook' });
  assert.deepEqual(new HttpError(400, 'bad', undefined, { field: 'rules[0]', column: 4 }).within('[1]').at, { field: '[1].rules[0]', column: 4 });
});

test('errors: JSON pointers as the fields a client wrote', () => {
  assert.equal(fieldPath('/rules/0'), 'rules[0]');
  assert.equal(fieldPath('/3/hook'), '[3].hook');
  assert.equal(fieldPath('', 'colour'), 'colour');
  assert.equal(fieldPath('/0', 'colour'), '[0].colour');
});

test('metrics: label values escaped as Prometheus wants; one series per rule', () => {
  const text = renderMetrics([{
    name: 'f', rules: ['a'], dev: 'eth0', hook: 'egress', seed: 1, path: 'tcx', programs: [1], createdAt: '', netns: '/proc/1/ns/net',
    counters: { rules: [{ name: 'r"1\\', text: 'a', dev: 'eth0', hook: 'egress', netns: '/proc/1/ns/net', matched: 5, acted: 4, dropped: 3, held: 0 }], delayLines: [], gsoPackets: 0 },
  }]);
  assert.match(text, /^netmangle_rule_matched_total\{fault="f",rule="r\\"1\\\\",dev="eth0",hook="egress",netns="\/proc\/1\/ns\/net"\} 5$/m);
  assert.match(text, /^netmangle_rule_dropped_total\{.*\} 3$/m);
  assert.equal(text.split('\n').filter((l) => l.startsWith('netmangle_rule_')).length, 4);
});
