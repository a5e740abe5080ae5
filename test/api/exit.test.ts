/**
 * A process that ends with faults still attached (process.exit(), an uncaught exception) leaves
 * nothing behind: netlink attachments removed, gso_max_segs put back, the delay line's TAP gone.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Lab } from '../../src/api/index.js';
import { kernelTest, uniqueName } from '../helpers/kernel.js';
import { interfacesIn, programsIn } from './hooks.js';

const API = pathToFileURL(join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'src', 'api', 'index.js')).href;

function gsoMaxSegs(lab: Lab, host: string): number {
  const r = spawnSync('ip', ['-n', lab.netns(host), '-d', 'link', 'show', 'dev', 'eth0'], { encoding: 'utf8' });
  return Number(/gso_max_segs (\d+)/.exec(r.stdout)?.[1]);
}

kernelTest('faults left attached when the process exits or throws are detached on the way out', async (t) => {
  const lab = await Lab.up({ hosts: { h1: {}, h2: {} }, links: [{ a: 'h1', b: 'h2' }] }, { name: uniqueName('exit') });
  try {
    const h1 = lab.netns('h1');
    const gso = gsoMaxSegs(lab, 'h1');
    assert.ok(gso > 1, `gso_max_segs of h1's eth0 is ${gso}`);
    const taps = interfacesIn(h1);
    for (const ending of ['process.exit(0)', "throw new Error('the caller failed')"]) {
      await t.test(ending, () => {
        const script = `
          import { attach } from ${JSON.stringify(API)};
          const target = { dev: 'eth0', hook: 'egress', netns: ${JSON.stringify(h1)} };
          await attach('tcp => pass', target, { path: 'netlink', perSegment: true });
          await attach('icmp.type == 8 => delay 1ms', { ...target, hook: 'ingress' });
          console.log('attached');
          ${ending};
        `;
        const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 30_000 });
        assert.match(r.stdout, /^attached$/m, r.stderr);
        assert.equal(r.status, ending.startsWith('throw') ? 1 : 0, r.stderr);
        assert.doesNotMatch(r.stderr, /while detaching/);
        assert.deepEqual(programsIn(h1), []);
        assert.equal(gsoMaxSegs(lab, 'h1'), gso);
        assert.deepEqual(interfacesIn(h1), taps);
      });
    }
  } finally {
    await lab.down();
  }
});
