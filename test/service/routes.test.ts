/**
 * Every route of `netmangle serve` and every error status, against a real service process over
 * its unix socket, attaching to a veth pair in namespaces made here; what is on the hooks is
 * read from the kernel, not from the service.
 */
import assert from 'node:assert/strict';
import { createMap, createXdpLink, loadProgram } from '../../src/kernel/index.js';
import { inNetns } from '../../src/kernel/netns.js';
import { kernelTest } from '../helpers/kernel.js';
import { XDP_PASS, countingProgram, createVethLab } from '../kernel/bpf-fixtures.js';
import { rawPost, startService, tcxPrograms, type ServiceProcess } from './support.js';

kernelTest('serve: every route, every error status, programs on the hooks as the service says', async () => {
  const lab = createVethLab();
  let svc: ServiceProcess | undefined;
  try {
    svc = await startService();
    const s = svc;
    const spec = (over: Record<string, unknown> = {}) => ({ name: 'f1', rules: 'icmp.type == 8 => pass', dev: lab.devA, hook: 'egress', netns: lab.nsA, ...over });
    const onA = () => tcxPrograms(lab.nsA, lab.devA).sort();

    // GET /version
    let r = await s.req('GET', '/version');
    assert.equal(r.status, 200);
    assert.equal(r.json.pid, s.proc.pid);
    assert.equal(r.json.api, 1);
    assert.ok(['tcx', 'netlink'].includes(r.json.paths.egress));
    assert.equal(r.json.paths.egress, 'tcx', 'this suite needs tcx links (Linux 6.6+); the probe says otherwise');

    // GET /faults, empty
    r = await s.req('GET', '/faults');
    assert.deepEqual([r.status, r.json], [200, []]);

    // POST /faults
    r = await s.req('POST', '/faults', spec({ seed: 7 }));
    assert.equal(r.status, 201, r.text);
    assert.equal(r.headers.location, '/faults/f1');
    assert.equal(r.json.path, 'tcx');
    assert.equal(r.json.seed, 7);
    assert.deepEqual(r.json.rules, ['icmp.type == 8 => pass']);
    assert.deepEqual(onA(), r.json.programs, 'the kernel has exactly the fault\'s program on the hooks');
    const firstProgram = r.json.programs[0];

    // GET /faults/{name} with counters that count real packets
    assert.ok(lab.ping(3));
    r = await s.req('GET', '/faults/f1');
    assert.equal(r.status, 200);
    const c = r.json.counters.rules[0];
    assert.equal(c.name, 'rule-1');
    assert.ok(c.matched >= 3 && c.acted >= 3 && c.dropped === 0, JSON.stringify(c));
    r = await s.req('GET', '/faults');
    assert.deepEqual(r.json.map((f: { name: string }) => f.name), ['f1']);

    // GET /metrics
    r = await s.req('GET', '/metrics');
    assert.equal(r.status, 200);
    assert.match(String(r.headers['content-type']), /^text\/plain; version=0\.0\.4/);
    const matched = new RegExp(`^netmangle_rule_matched_total\\{fault="f1",rule="rule-1",dev="${lab.devA}",hook="egress",netns="${lab.nsA}"\\} (\\d+)$`, 'm').exec(r.text);
    assert.ok(matched && Number(matched[1]) >= 3, r.text);
    assert.match(r.text, /^netmangle_faults 1$/m);
    assert.match(r.text, /^# TYPE netmangle_rule_held gauge$/m);

    // 409: the name is taken; nothing more on the hook
    r = await s.req('POST', '/faults', spec());
    assert.equal(r.status, 409);
    assert.equal(r.json.error, 'a fault named f1 already exists');
    assert.deepEqual(onA(), [firstProgram]);

    // 400: bad JSON (with where), unknown field, missing field, wrong type, bad value, bad name
    r = await s.req('POST', '/faults', '{"name": "x",');
    assert.equal(r.status, 400);
    assert.match(r.json.error, /^the body is not JSON: .* at character 14$/);
    assert.equal(r.json.at.column, 14);
    r = await s.req('POST', '/faults', spec({ name: 'f2', colour: 'red' }));
    assert.deepEqual([r.status, r.json.error, r.json.at.field], [400, 'unknown field "colour"', 'colour']);
    assert.match(r.json.hint, /known fields: name, rules, dev, hook/);
    r = await s.req('POST', '/faults', { name: 'f2', dev: lab.devA, hook: 'egress' });
    assert.deepEqual([r.status, r.json.error], [400, 'missing field "rules"']);
    r = await s.req('POST', '/faults', spec({ name: 'f2', every: '3' }));
    assert.deepEqual([r.status, r.json.error], [400, 'every must be an integer']);
    r = await s.req('POST', '/faults', spec({ name: 'f2', probability: 3 }));
    assert.deepEqual([r.status, r.json.at.field], [400, 'probability']);
    assert.match(r.json.error, /^probability: 3 is not valid$/);
    r = await s.req('POST', '/faults', spec({ name: 'f2', hook: 'egres' }));
    assert.deepEqual([r.status, r.json.error], [400, 'hook must be one of xdp, ingress, egress']);
    r = await s.req('POST', '/faults', spec({ name: 'no spaces' }));
    assert.deepEqual([r.status, r.json.error], [400, 'name: not a fault name']);

    // 400: a rule with a syntax error, with the rule and the column
    r = await s.req('POST', '/faults', spec({ name: 'f2', rules: ['icmp => pass', 'icmp.type == 8 => dorp'] }));
    assert.equal(r.status, 400);
    assert.match(r.json.error, /found "dorp"/);
    assert.deepEqual(r.json.at, { field: 'rules[1]', column: 19 });
    r = await s.req('POST', '/faults', spec({ name: 'f2', rules: 'ip.tll == 1 => drop' }));
    assert.deepEqual([r.status, r.json.error, r.json.at.column], [400, 'unknown field "ip.tll" (did you mean ip.ttl?)', 1]);

    // 422: the checker refuses
    r = await s.req('POST', '/faults', spec({ name: 'f2', rules: 'ip.ttl == 1 => set ip.ttl = 300' }));
    assert.equal(r.status, 422);
    assert.deepEqual([r.json.error, r.json.at], ['300 does not fit ip.ttl, which holds 0 to 255', { field: 'rules', column: 29 }]);

    // 404: no such fault, namespace, interface, route
    for (const [method, path] of [['GET', '/faults/nope'], ['PATCH', '/faults/nope'], ['DELETE', '/faults/nope'], ['POST', '/faults/nope/renew']] as const) {
      r = await s.req(method, path, method === 'PATCH' ? { first: 1 } : undefined);
      assert.deepEqual([r.status, r.json.error], [404, 'no fault named nope'], `${method} ${path}`);
    }
    r = await s.req('POST', '/faults', spec({ name: 'f2', netns: 'nm-no-such-ns' }));
    assert.equal(r.status, 404);
    assert.match(r.json.error, /^no network namespace nm-no-such-ns/);
    r = await s.req('POST', '/faults', spec({ name: 'f2', dev: 'nope0' }));
    assert.deepEqual([r.status, r.json.error], [404, `no interface nope0 in namespace ${lab.nsA}`]);
    r = await s.req('POST', '/faults', spec({ name: 'f2', netns: '/proc/999999999/ns/net' }));
    assert.equal(r.status, 404, r.text);
    // A namespace given by path, as a container's agent has it
    r = await s.req('POST', '/faults', spec({ name: 'by-path', hook: 'ingress', netns: `/run/netns/${lab.nsA}` }));
    assert.deepEqual([r.status, r.json.netns], [201, `/run/netns/${lab.nsA}`], r.text);
    assert.equal(onA().length, 2);
    assert.equal((await s.req('DELETE', '/faults/by-path')).status, 204);
    assert.deepEqual(onA(), [firstProgram]);
    r = await s.req('GET', '/nowhere');
    assert.deepEqual([r.status, r.json.error], [404, 'no route GET /nowhere']);

    // 409: the XDP hook holds a program netmangle did not attach
    const code = countingProgram(XDP_PASS);
    using counts = createMap({ type: 'array', keySize: 4, valueSize: 8, maxEntries: 1, name: 'nm_foreign' });
    using foreign = loadProgram({ type: 'xdp', insns: code.insns, mapRefs: code.mapRefs, maps: { counts }, name: 'nm_foreign' });
    const foreignLink = inNetns(lab.nsB, () => createXdpLink(foreign, lab.ifindexB, { mode: 'skb' }));
    try {
      r = await s.req('POST', '/faults', { name: 'x1', rules: 'icmp => pass', dev: lab.devB, hook: 'xdp', netns: lab.nsB });
      assert.equal(r.status, 409);
      assert.match(r.json.error, new RegExp(`already holds XDP program id ${foreign.id} 'nm_foreign'`));
    } finally {
      foreignLink.close();
    }
    // … and a second fault on an XDP hook one of ours holds
    r = await s.req('POST', '/faults', { name: 'x1', rules: 'icmp => pass', dev: lab.devB, hook: 'xdp', netns: lab.nsB });
    assert.equal(r.status, 201, r.text);
    assert.equal(r.json.path, 'link');
    r = await s.req('POST', '/faults', { name: 'x2', rules: 'udp => pass', dev: lab.devB, hook: 'xdp', netns: lab.nsB });
    assert.deepEqual([r.status, r.json.error], [409, `the XDP hook of ${lab.devB} (namespace ${lab.nsB}) holds fault x1`]);

    // 413: over 1 MB; 415: not JSON
    const big = await rawPost(s.where, '/faults', Buffer.from(JSON.stringify(spec({ name: 'big', pad: 'x'.repeat(1024 * 1024) }))));
    assert.deepEqual([big.status, big.json?.error], [413, 'the body is larger than 1048576 bytes']);
    r = await s.req('POST', '/faults', 'name=f2', { 'content-type': 'application/x-www-form-urlencoded' });
    assert.deepEqual([r.status, r.json.error], [415, 'the body must be JSON, not application/x-www-form-urlencoded']);

    // PATCH: new rules swapped in one step on the tcx link; a lease alone changes no program
    r = await s.req('PATCH', '/faults/f1', { rules: 'icmp.type == 8 => set ip.ttl = 9' });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.replaced, 'atomically');
    assert.notEqual(r.json.fault.programs[0], firstProgram);
    assert.equal(r.json.fault.seed, 7, 'the seed stays');
    assert.deepEqual(onA(), r.json.fault.programs, 'the new program took the old one\'s place');
    const patched = r.json.fault.programs[0];
    r = await s.req('PATCH', '/faults/f1', { ttl: 600 });
    assert.deepEqual([r.json.replaced, r.json.fault.ttl, r.json.fault.programs], ['unchanged', 600, [patched]]);
    assert.ok(Date.parse(r.json.fault.expiresAt) > Date.now() + 590_000);
    r = await s.req('PATCH', '/faults/f1', { ttl: null });
    assert.equal(r.json.fault.ttl, undefined);
    // the XDP fault: an XDP link, swapped in one step too
    r = await s.req('PATCH', '/faults/x1', { rules: 'udp => pass' });
    assert.deepEqual([r.status, r.json.replaced], [200, 'atomically']);
    // a delay rule needs a delay line: detach + attach, said in the reply
    r = await s.req('PATCH', '/faults/f1', { rules: 'icmp.type == 8 => delay 1ms' });
    assert.deepEqual([r.status, r.json.replaced], [200, 'detach-attach'], r.text);
    const delayed = r.json.fault.programs[0];
    assert.deepEqual(onA(), [delayed]);
    // refused changes leave the fault as it was
    r = await s.req('PATCH', '/faults/f1', { rules: 'ip.ttl == 1 => set ip.ttl = 300' });
    assert.equal(r.status, 422);
    r = await s.req('PATCH', '/faults/f1', { dev: 'other0' });
    assert.deepEqual([r.status, r.json.at.field], [400, 'dev']);
    r = await s.req('PATCH', '/faults/f1', {});
    assert.equal(r.status, 400);
    r = await s.req('GET', '/faults/f1');
    assert.deepEqual([r.json.rules, r.json.programs], [['icmp.type == 8 => delay 1ms'], [delayed]]);
    assert.deepEqual(onA(), [delayed]);

    // POST /faults/{name}/renew
    r = await s.req('POST', '/faults/f1/renew');
    assert.deepEqual([r.status, r.json.error], [400, 'fault f1 has no ttl to renew']);
    r = await s.req('POST', '/faults/f1/renew', { ttl: '10m' });
    assert.deepEqual([r.status, r.json.ttl], [200, 600]);
    const until = Date.parse(r.json.expiresAt);
    await new Promise((res) => setTimeout(res, 20));
    r = await s.req('POST', '/faults/f1/renew');
    assert.ok(Date.parse(r.json.expiresAt) > until, 'renewing moves the expiry');
    r = await s.req('POST', '/faults/f1/renew', { ttl: 'soon' });
    assert.equal(r.status, 400);

    // POST /populate: idempotent, all or nothing
    const listed = [
      { name: 'p1', rules: 'udp => pass', dev: lab.devA, hook: 'ingress', netns: lab.nsA },
      { name: 'p2', rules: 'tcp => pass', dev: lab.devA, hook: 'ingress', netns: lab.nsA, first: 5 },
    ];
    r = await s.req('POST', '/populate', listed);
    assert.equal(r.status, 200, r.text);
    assert.deepEqual([r.json.created, r.json.replaced, r.json.unchanged], [['p1', 'p2'], [], []]);
    const populated = r.json.faults.map((f: { programs: number[] }) => f.programs[0]);
    r = await s.req('POST', '/populate', listed);
    assert.deepEqual([r.json.created, r.json.replaced, r.json.unchanged], [[], [], ['p1', 'p2']]);
    assert.deepEqual(r.json.faults.map((f: { programs: number[] }) => f.programs[0]), populated, 'unchanged faults keep their programs');
    r = await s.req('POST', '/populate', [listed[0], { ...listed[1], first: 6 }]);
    assert.deepEqual([r.json.created, r.json.replaced, r.json.unchanged], [[], ['p2'], ['p1']]);
    const before = onA();
    r = await s.req('POST', '/populate', [{ ...listed[0], name: 'p3' }, { ...listed[1], name: 'p4', rules: 'ip.ttl == 1 => set ip.ttl = 300' }]);
    assert.equal(r.status, 422);
    assert.equal(r.json.at.field, '[1].rules');
    r = await s.req('GET', '/faults');
    assert.deepEqual(r.json.map((f: { name: string }) => f.name).sort(), ['f1', 'p1', 'p2', 'x1'], 'p3 was undone');
    assert.deepEqual(onA(), before);
    r = await s.req('POST', '/populate', [{ ...listed[0], hook: 'sideways' }]);
    assert.deepEqual([r.status, r.json.at.field], [400, '[0].hook']);
    r = await s.req('POST', '/populate', [listed[0], listed[0]]);
    assert.deepEqual([r.status, r.json.error], [400, 'fault p1 is listed twice']);

    // GET /openapi.json: every route, from the same schemas
    r = await s.req('GET', '/openapi.json');
    assert.equal(r.status, 200);
    assert.equal(r.json.openapi, '3.0.3');
    assert.deepEqual(Object.keys(r.json.paths).sort(), ['/faults', '/faults/{name}', '/faults/{name}/renew', '/metrics', '/populate', '/reset', '/version']);
    assert.deepEqual(Object.keys(r.json.paths['/faults/{name}']).sort(), ['delete', 'get', 'patch']);
    assert.equal(r.json.components.schemas.FaultSpec.additionalProperties, false);
    assert.ok(r.json.paths['/faults'].post.responses['422'], 'error responses are documented');

    // DELETE /faults/{name}
    r = await s.req('DELETE', '/faults/p1');
    assert.deepEqual([r.status, r.text], [204, '']);
    assert.equal(onA().length, 2, 'f1 and p2 are left on A');

    // POST /reset
    r = await s.req('POST', '/reset');
    assert.deepEqual([r.status, r.json.detached.sort()], [200, ['f1', 'p2', 'x1']]);
    assert.deepEqual(onA(), []);
    r = await s.req('GET', '/faults');
    assert.deepEqual(r.json, []);
  } finally {
    await svc?.stop();
    lab.destroy();
  }
});
