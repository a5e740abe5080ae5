/**
 * examples/rules.yaml's v6-hlim rule, in a lab: IPv6 keeps working while it is attached
 * (neighbour discovery, which a receiver drops unless its hop limit is 255, is left alone), and
 * the same rule without that exclusion is the control that breaks it.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { kernelTest, uniqueName } from '../helpers/kernel.js';
import { Lab } from '../../src/lab/lab.js';
import { applyRule } from '../../src/lab/experiments.js';
import { loadRulesFile } from '../../src/rules/load.js';

const repo = fileURLToPath(new URL('../../../', import.meta.url));
const example = loadRulesFile(join(repo, 'examples', 'rules.yaml'));
const v6hlim = example.groups.flatMap((g) => g.rules.map((r) => ({ g, r }))).find(({ r }) => r.name === 'v6-hlim')!;

/**
 * Pings `to`'s IPv6 address from `from` after both forgot their neighbours, so ND runs again.
 * From h2 to h1 it is h1's neighbour advertisement, sent out where the rule sits, that h2 needs.
 */
async function ping6(lab: Lab, from: string, to: string, count: number): Promise<{ received: number; output: string }> {
  for (const h of ['h1', 'h2']) await lab.exec(h, ['ip', '-6', 'neigh', 'flush', 'all'], { check: true });
  const r = await lab.exec(from, ['ping', '-6', '-n', '-c', String(count), '-i', '0.2', '-W', '1', lab.address(to, 6)], { timeoutMs: 20_000 });
  const m = /(\d+) received/.exec(r.stdout);
  return { received: m ? Number(m[1]) : 0, output: r.stdout + r.stderr };
}

kernelTest('examples/rules.yaml v6-hlim: IPv6 ping works both ways while it is attached at h1 egress, and its echo packets are rewritten', async () => {
  assert.equal(v6hlim.g.netns, 'nm-lab-h1');
  assert.equal(v6hlim.g.dev, 'eth0');
  assert.equal(v6hlim.g.hook, 'egress');
  assert.match(v6hlim.r.text, /not icmpv6\.type in \{133\.\.137\}/);
  await using lab = await Lab.up(undefined, { name: uniqueName('ex6') });
  const rule = await applyRule(lab, 'h1', 'eth0', 'egress', v6hlim.r.text, { seed: 1 });
  let out, back;
  try {
    out = await ping6(lab, 'h1', 'h2', 5);
    back = await ping6(lab, 'h2', 'h1', 5);
  } finally {
    await rule.detach();
  }
  assert.equal(out.received, 5, out.output);
  assert.equal(back.received, 5, back.output);
  const acted = /rule rule-1: matched=(\d+) acted=(\d+)/.exec(rule.output());
  assert.ok(acted && Number(acted[2]) >= 10, `the echo requests were rewritten: ${rule.output()}`);

  // The control: the same rewrite on neighbour discovery too leaves h2 unable to answer.
  const unguarded = v6hlim.r.text.replace(/ and not icmpv6\.type in \{133\.\.137\}/, '');
  assert.notEqual(unguarded, v6hlim.r.text);
  const broken = await applyRule(lab, 'h1', 'eth0', 'egress', unguarded, { seed: 1 });
  let lost;
  try {
    lost = await ping6(lab, 'h2', 'h1', 3);
  } finally {
    await broken.detach();
  }
  assert.equal(lost.received, 0, lost.output);
});
