/**
 * The service's life: one per socket (a live one named by pid, a stale one replaced), the
 * socket's mode, TCP only on loopback and only with a token, leases that run out, SIGTERM
 * and kill -9 leaving nothing attached.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { probeFeaturesCached } from '../../src/kernel/probe.js';
import { kernelTest } from '../helpers/kernel.js';
import { createVethLab } from '../kernel/bpf-fixtures.js';
import { CLI, http, sleep, startService, tcxPrograms } from './support.js';

const serveOnce = (args: string[]) => spawnSync(process.execPath, [CLI, 'serve', ...args], { encoding: 'utf8', timeout: 20_000 });

kernelTest('serve: a unix socket of mode 0600; a second serve names the first one\'s pid; a stale socket is replaced', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'nm-svc-'));
  try {
    const socket = join(dir, 'netmangle.sock');
    const first = await startService(['--listen', `unix:${socket}`], { dir });
    try {
      assert.equal(statSync(socket).mode & 0o777, 0o600);
      const second = serveOnce(['--listen', `unix:${socket}`]);
      assert.equal(second.status, 1);
      assert.equal(second.stderr, `netmangle: netmangle serve (pid ${first.proc.pid}) is already listening on ${socket}\n  one service per socket: stop it (kill ${first.proc.pid}) or give this one --listen unix:OTHER_PATH\n`);
      assert.equal((await first.req('GET', '/version')).status, 200, 'the first service still answers');
    } finally {
      await first.stop();
    }
    assert.equal(existsSync(socket), false, 'a stopped service removes its socket');

    // A socket file nobody listens on (what kill -9 leaves): replaced without a word.
    const holder = spawn(process.execPath, ['-e', `require('node:net').createServer().listen(${JSON.stringify(socket)}, () => console.log('up'))`], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise((r) => holder.stdout!.once('data', r));
    holder.kill('SIGKILL');
    await new Promise((r) => holder.once('exit', r));
    assert.ok(statSync(socket).isSocket(), 'a stale socket file is there');
    const again = await startService(['--listen', `unix:${socket}`], { dir });
    try {
      assert.equal((await again.req('GET', '/version')).json.pid, again.proc.pid);
    } finally {
      await again.stop();
    }

    // A file that is not a socket is never removed.
    writeFileSync(socket, 'precious');
    const refused = serveOnce(['--listen', `unix:${socket}`]);
    assert.equal(refused.status, 1);
    assert.match(refused.stderr, new RegExp(`^netmangle: ${socket} exists and is not a socket\n`));
    assert.equal(statSync(socket).isFile(), true);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

kernelTest('serve over TCP: loopback only (unless --listen-any), a token required: 401 without, 403 wrong, constant answers', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'nm-svc-'));
  try {
    const tokenFile = join(dir, 'token');
    const token = 'k2Jr0cQ8mX5tVb7nLw3pZs9d';
    writeFileSync(tokenFile, `${token}\n`, { mode: 0o600 });

    let r = serveOnce(['--listen', '127.0.0.1:0']);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /^netmangle: --listen 127\.0\.0\.1:0 needs --token-file FILE/);
    r = serveOnce(['--listen', '198.18.0.1:8474', '--token-file', tokenFile]);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /^netmangle: 198\.18\.0\.1 is not a loopback address: .*\n  listen on 127\.0\.0\.1 or ::1, or add --listen-any if you mean it\n$/);
    r = serveOnce(['--listen', 'unix:/tmp/x.sock', '--token-file', tokenFile]);
    assert.equal(r.status, 2);
    writeFileSync(join(dir, 'short'), 'abc\n');
    r = serveOnce(['--listen', '127.0.0.1:0', '--token-file', join(dir, 'short')]);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /^netmangle: the token in .*short is 3 characters long: use at least 16\n/);
    r = serveOnce(['--listen', 'nowhere', '--token-file', tokenFile]);
    assert.equal(r.status, 2);

    const svc = await startService(['--listen', '127.0.0.1:0', '--token-file', tokenFile], { dir });
    try {
      assert.ok('port' in svc.where);
      let res = await svc.req('GET', '/faults');
      assert.deepEqual([res.status, res.json.error], [401, 'this service needs a bearer token']);
      assert.equal(res.headers['www-authenticate'], 'Bearer realm="netmangle"');
      res = await svc.req('POST', '/reset', undefined, { authorization: 'Basic abc' });
      assert.equal(res.status, 401);
      res = await svc.req('GET', '/faults', undefined, { authorization: `Bearer ${token}x` });
      assert.deepEqual([res.status, res.json.error], [403, 'the bearer token does not match']);
      res = await svc.req('GET', '/openapi.json', undefined, { authorization: 'Bearer short' });
      assert.equal(res.status, 403);
      res = await svc.req('GET', '/faults', undefined, { authorization: `Bearer ${token}` });
      assert.deepEqual([res.status, res.json], [200, []]);
      res = await svc.req('GET', '/openapi.json', undefined, { authorization: `Bearer ${token}` });
      assert.deepEqual(res.json.security, [{ bearer: [] }]);
      // A second service on the same port names the first (it has the token to ask).
      const port = (svc.where as { port: number }).port;
      r = serveOnce(['--listen', `127.0.0.1:${port}`, '--token-file', tokenFile]);
      assert.equal(r.status, 1);
      assert.equal(r.stderr.split('\n')[0], `netmangle: 127.0.0.1:${port} is in use by netmangle serve (pid ${svc.proc.pid})`);
    } finally {
      await svc.stop();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

kernelTest('serve: a fault whose lease runs out is detached; renewing keeps it', async () => {
  const lab = createVethLab();
  const svc = await startService();
  try {
    const base = { rules: 'icmp => pass', dev: lab.devA, hook: 'egress', netns: lab.nsA };
    let r = await svc.req('POST', '/faults', { ...base, name: 'short', ttl: 1 });
    assert.equal(r.status, 201, r.text);
    r = await svc.req('POST', '/faults', { ...base, name: 'renewed', ttl: '1s' });
    assert.equal(r.status, 201);
    r = await svc.req('POST', '/faults', { ...base, name: 'forever' });
    assert.equal(tcxPrograms(lab.nsA, lab.devA).length, 3);
    for (let i = 0; i < 4; i++) {
      await sleep(400);
      assert.equal((await svc.req('POST', '/faults/renewed/renew')).status, 200);
    }
    // 1.6 s on: "short" is gone, "renewed" was renewed every 0.4 s.
    r = await svc.req('GET', '/faults/short');
    assert.equal(r.status, 404);
    r = await svc.req('GET', '/faults');
    assert.deepEqual(r.json.map((f: { name: string }) => f.name).sort(), ['forever', 'renewed']);
    assert.equal(tcxPrograms(lab.nsA, lab.devA).length, 2, 'the expired fault\'s program left the hook');
    assert.match(svc.stdout(), new RegExp(`^created short: ${lab.devA} egress \\(netns ${lab.nsA}\\) via tcx, program \\d+$`, 'm'));
    assert.match(svc.stdout(), /^expired short$/m, 'the service says what it did');
    await sleep(1500);
    r = await svc.req('GET', '/faults');
    assert.deepEqual(r.json.map((f: { name: string }) => f.name), ['forever']);
    assert.equal(tcxPrograms(lab.nsA, lab.devA).length, 1);
  } finally {
    await svc.stop();
    lab.destroy();
  }
});

kernelTest('serve: SIGTERM detaches every fault; kill -9 with 20 faults attached leaves none (tcx links)', async (t) => {
  if (probeFeaturesCached().attach.ingress !== 'tcx') {
    // Without tcx links the programs go through netlink, which a SIGKILL does not undo.
    t.skip('this kernel has no tcx links: faults attached through netlink outlive kill -9');
    return;
  }
  const lab = createVethLab();
  try {
    const create = async (svc: Awaited<ReturnType<typeof startService>>, n: number) => {
      for (let i = 0; i < n; i++) {
        const r = await svc.req('POST', '/faults', { name: `k${i}`, rules: `udp.dstport == ${1000 + i} => drop`, dev: i % 2 ? lab.devA : lab.devB, hook: i % 3 ? 'ingress' : 'egress', netns: i % 2 ? lab.nsA : lab.nsB });
        assert.equal(r.status, 201, r.text);
      }
    };
    const onHooks = () => tcxPrograms(lab.nsA, lab.devA).length + tcxPrograms(lab.nsB, lab.devB).length;

    let svc = await startService();
    await create(svc, 6);
    assert.equal(onHooks(), 6);
    // `netmangle status` shows each fault of the service on its own.
    const status = spawnSync(process.execPath, [CLI, 'status'], { encoding: 'utf8' });
    assert.equal(status.stdout.split('\n').filter((l) => l.includes(`run by pid ${svc.proc.pid},`)).length, 6, status.stdout);
    svc.proc.kill('SIGTERM');
    const term = await svc.exited();
    assert.equal(term.code, 0, svc.stderr());
    assert.match(svc.stdout(), /SIGTERM: detached 6 faults \(k0, k1, k2, k3, k4, k5\); stopped\n$/);
    assert.equal(onHooks(), 0);
    await svc.stop();

    svc = await startService();
    await create(svc, 20);
    assert.equal(onHooks(), 20);
    assert.equal((await svc.req('GET', '/faults')).json.length, 20);
    svc.proc.kill('SIGKILL');
    const killed = await svc.exited();
    assert.equal(killed.signal, 'SIGKILL');
    // The links die with the process's file descriptors; the kernel may take a moment.
    for (let i = 0; i < 50 && onHooks() > 0; i++) await sleep(100);
    assert.equal(onHooks(), 0, 'nothing stays attached after kill -9');
    // Its socket stays behind; the next service replaces it.
    assert.ok(existsSync(svc.socket));
    const next = await startService(['--listen', `unix:${svc.socket}`], { dir: svc.dir });
    assert.equal((await http(next.where, 'GET', '/faults')).json.length, 0);
    await next.stop();
    await svc.stop();
  } finally {
    lab.destroy();
  }
});
