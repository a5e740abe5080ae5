/**
 * Fuzzes the rules-file loader (YAML and JSON) with files mutated from valid ones, as text and
 * as bytes: each is loaded or refused with one UsageError (exit 2).
 */
import { test } from 'node:test';
import { readFileSync } from 'node:fs';
import { loadRulesText } from '../../src/rules/load.js';
import { assertNoFindings, fuzz, fuzzTestOptions, judge, mutateBytes, mutateText, repoPath, textCodec } from './engine.js';

const CORPUS = [
  readFileSync(repoPath('examples/rules.yaml'), 'utf8'),
  'dev: veth0\nhook: egress\nrules:\n  - rule: "icmp.type == 8 => drop"\n  - {match: tcp, set: {ip.ttl: 1}, every: 2, per-connection: true, first: 1}\n',
  '- {dev: veth0, hook: xdp, rule: "udp => drop", probability: 0.5}\n- dev: veth1\n  hook: ingress\n  match: ip.src == 198.18.0.1\n  action: reject with host-unreachable\n',
  '{"seed": 7, "dev": "veth0", "hook": "egress", "rules": [{"name": "a", "match": "tcp.port == 80", "action": "duplicate 2", "limit": "10/s", "for": "1m"}]}\n',
  'x: &m tcp.port == 80\nrules:\n  - {dev: veth0, hook: egress, match: *m, action: drop, start-after: 5s, lengths: keep}\n',
  'dev: veth0\nhook: egress\nrules:\n  - match: |\n      ip.ttl > 1\n      and udp\n    set:\n      ip.ttl: ip.ttl - 1\n    checksum: keep\n',
];

test('fuzz: rules-file loader (YAML and JSON)', fuzzTestOptions('rules-file'), async (t) => {
  const report = await fuzz({
    name: 'rules-file',
    corpus: CORPUS,
    mutate: (rng, input, corpus) => (rng.chance(0.7)
      ? mutateText(rng, input, corpus)
      : textCodec.decode(mutateBytes(rng, textCodec.encode(input), corpus.map(textCodec.encode)))),
    check: (text) => {
      try {
        loadRulesText(text, 'rules.yaml');
        return undefined;
      } catch (err) {
        return judge(err, [2]);
      }
    },
    ...textCodec,
    ext: 'yaml',
  });
  assertNoFindings(report, t);
});
