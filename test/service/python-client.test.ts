/**
 * The Python client's own test (clients/python, pytest) against a real service and a veth
 * pair made here: it fails when any Python test fails or is skipped.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { kernelTest } from '../helpers/kernel.js';
import { createVethLab } from '../kernel/bpf-fixtures.js';
import { ROOT, startService, tcxPrograms } from './support.js';

/** Debian's python3 (with python3-pytest from scripts/setup.sh) when there is one, else python3 from PATH. */
const PYTHON = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';

kernelTest('the Python client passes its pytest suite against a real service', async () => {
  const lab = createVethLab();
  const svc = await startService();
  try {
    const r = spawnSync(PYTHON, ['-m', 'pytest', '-q', '-rA', '-p', 'no:cacheprovider', join(ROOT, 'clients', 'python')], {
      encoding: 'utf8',
      timeout: 120_000,
      env: { ...process.env, NETMANGLE_SOCKET: svc.socket, NM_TEST_NETNS: lab.nsA, NM_TEST_DEV: lab.devA, NM_TEST_PEER: '198.18.0.2', PYTHONDONTWRITEBYTECODE: '1' },
    });
    const out = `${r.stdout}${r.stderr}`;
    assert.ok(!/No module named pytest/.test(out), `${PYTHON} has no pytest: scripts/setup.sh installs python3-pytest`);
    assert.equal(r.status, 0, out);
    assert.match(out, /\b6 passed\b/, out);
    assert.doesNotMatch(out, /skipped|xfail/, out);
    assert.deepEqual((await svc.req('GET', '/faults')).json, [], 'the fixture detached everything');
    assert.deepEqual(tcxPrograms(lab.nsA, lab.devA), []);
  } finally {
    await svc.stop();
    lab.destroy();
  }
});
