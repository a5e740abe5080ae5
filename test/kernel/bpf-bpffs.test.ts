import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, statfsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NetmangleError } from '../../src/errors.js';
import { createMap, ensureBpffs, getPinned, pinObject, closeFd } from '../../src/kernel/index.js';
import { kernelTest } from '../helpers/kernel.js';

const BPF_FS_MAGIC = 0xcafe4a11;

kernelTest('ensureBpffs mounts the BPF filesystem where there is none, once, and pins work there', () => {
  const dir = mkdtempSync(join(tmpdir(), 'nm-bpffs-'));
  let mounted = false;
  try {
    assert.notEqual(statfsSync(dir).type, BPF_FS_MAGIC);
    ensureBpffs(dir);
    mounted = true;
    assert.equal(statfsSync(dir).type, BPF_FS_MAGIC);
    ensureBpffs(dir); // already mounted: nothing happens
    const mountsHere = execFileSync('findmnt', ['-n', '-o', 'FSTYPE', dir], { encoding: 'utf8' }).trim().split('\n');
    assert.deepEqual(mountsHere, ['bpf'], 'mounted exactly once');

    using m = createMap({ type: 'array', keySize: 4, valueSize: 4, maxEntries: 1 });
    pinObject(m.fd, join(dir, 'sub', 'map'));
    const pinned = getPinned(join(dir, 'sub', 'map'));
    closeFd(pinned.fd);
    assert.equal(pinned.kind, 'map');
  } finally {
    if (mounted) execFileSync('umount', [dir]);
    rmSync(dir, { recursive: true, force: true });
  }
});

kernelTest('pinning outside a BPF filesystem is refused with a clear message', () => {
  const dir = mkdtempSync(join(tmpdir(), 'nm-nobpffs-'));
  try {
    using m = createMap({ type: 'array', keySize: 4, valueSize: 4, maxEntries: 1 });
    assert.throws(() => pinObject(m.fd, join(dir, 'map')), (err: unknown) =>
      err instanceof NetmangleError && /is not on a BPF filesystem/.test(err.message));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
