import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseRunSummary } from '../../bench/lib/cli.js';

test('parseRunSummary reads the rule and delay line counters netmangle run prints at exit', () => {
  const out = [
    'attached 1 rule to eth0 egress (netns nm-x-h1) via tcx, program id 7, seed 12345',
    'detached (SIGINT)',
    'rule rule-1: matched=199932 acted=199930 dropped=2',
    'delay line eth0/egress: held=3 peak=2981 delayed=197323 reordered=0 overtaken=0 timed-out=0 followers=0 over-limit=17 failed=1',
    '',
  ].join('\n');
  const s = parseRunSummary(out);
  assert.deepEqual(s.rules, { 'rule-1': { matched: 199932, acted: 199930, dropped: 2 } });
  const line = s.delayLines['eth0/egress'];
  assert.ok(line);
  assert.equal(line['held'], 3);
  assert.equal(line['peak'], 2981);
  assert.equal(line['delayed'], 197323);
  assert.equal(line['over-limit'], 17);
  assert.equal(line['timed-out'], 0);
  assert.equal(line['failed'], 1);
});

test('parseRunSummary finds nothing in output without a summary', () => {
  const s = parseRunSummary('attached 1 rule to eth0 egress via tcx\n');
  assert.deepEqual(s.rules, {});
  assert.deepEqual(s.delayLines, {});
});
