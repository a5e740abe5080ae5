import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import {
  HELPERS, Helper, HELPER_ID_COUNT, helperById, helperByName, helperName, helperAllowed,
  Assembler, disassemble,
} from '../../src/bpf/index.js';

const FIXTURES = fileURLToPath(new URL('../../../test/fixtures/bpf/', import.meta.url));

/** "<id> <name>" lines from the kernel's BTF (scripts/golden/make-helper-ids.sh). */
function kernelIds(): Map<number, string> {
  const ids = new Map<number, string>();
  for (const line of readFileSync(`${FIXTURES}helper-ids.txt`, 'utf8').split('\n')) {
    const [id, name] = line.split(' ');
    if (id && name && !name.startsWith('__')) ids.set(Number(id), name);
  }
  return ids;
}

test('every helper id has the kernel\'s name', () => {
  const ids = kernelIds();
  assert.equal(HELPER_ID_COUNT, ids.size, 'as many ids as the kernel defines (unspec included)');
  for (const [id, name] of ids) {
    if (id === 0) assert.equal(helperName(0), undefined, 'unspec is not a helper');
    else assert.equal(helperName(id), name, `id ${id}`);
  }
  assert.equal(helperName(HELPER_ID_COUNT), undefined);
  assert.equal(helperName(-1), undefined);
  assert.equal(helperName(1.5), undefined);
});

test('the described helpers have the kernel\'s ids and are sorted by id', () => {
  const ids = kernelIds();
  let last = 0;
  for (const h of HELPERS) {
    assert.equal(ids.get(h.id), h.name, h.name);
    assert.ok(h.id > last, `${h.name} out of order`);
    last = h.id;
  }
});

test('the helpers networking and maps need are all described', () => {
  const required = [
    'map_lookup_elem', 'map_update_elem', 'map_delete_elem', 'ktime_get_ns', 'trace_printk',
    'get_prandom_u32', 'get_smp_processor_id', 'skb_store_bytes', 'l3_csum_replace', 'l4_csum_replace',
    'tail_call', 'clone_redirect', 'redirect', 'skb_vlan_push', 'skb_vlan_pop', 'skb_change_tail',
    'skb_change_head', 'csum_diff', 'skb_load_bytes', 'xdp_adjust_head', 'xdp_adjust_tail', 'redirect_map',
    'perf_event_output', 'ringbuf_output', 'ringbuf_reserve', 'ringbuf_submit', 'ringbuf_discard',
    'skb_adjust_room', 'csum_update', 'set_hash_invalid', 'get_hash_recalc', 'fib_lookup',
    'ktime_get_boot_ns', 'skb_pull_data', 'xdp_load_bytes', 'xdp_store_bytes',
  ];
  for (const name of required) assert.ok(helperByName(name), `${name} missing`);
  assert.ok(HELPERS.length >= 60, `only ${HELPERS.length} helpers described`);
});

test('lookups by id and by name agree, with or without the bpf_ prefix', () => {
  assert.equal(helperById(1)?.name, 'map_lookup_elem');
  assert.equal(helperByName('bpf_get_prandom_u32')?.id, 7);
  assert.equal(helperByName('get_prandom_u32')?.id, 7);
  assert.equal(helperByName('no_such_helper'), undefined);
  assert.equal(helperById(4), undefined, 'probe_read is not described (not a packet helper)');
  for (const h of HELPERS) {
    assert.equal(helperById(h.id), h);
    assert.equal(helperByName(h.name), h);
    assert.equal(Helper[h.name as keyof typeof Helper], h.id);
  }
  assert.equal(Object.keys(Helper).length, HELPERS.length);
});

test('Helper holds ids for code generation', () => {
  assert.equal(Helper.map_lookup_elem, 1);
  assert.equal(Helper.get_prandom_u32, 7);
  assert.equal(Helper.l4_csum_replace, 11);
  assert.equal(Helper.redirect, 23);
  assert.equal(Helper.xdp_adjust_tail, 65);
  assert.equal(Helper.ringbuf_reserve, 131);
  assert.equal(Helper.xdp_store_bytes, 190);
  assert.ok(Object.isFrozen(Helper));
  const { insns } = new Assembler().call(Helper.ktime_get_ns).exit().assemble();
  assert.deepEqual(disassemble(insns, { helperNames: true }), ['call 0x5 <ktime_get_ns>', 'exit']);
});

test('signatures are well formed: at most five arguments, every buffer followed by its size', () => {
  const sized = new Set(['mem', 'mem_or_null', 'uninit_mem']);
  const sizes = new Set(['size', 'size_or_zero']);
  for (const h of HELPERS) {
    assert.ok(h.args.length <= 5, h.name);
    h.args.forEach((kind, i) => {
      if (sized.has(kind)) assert.ok(sizes.has(h.args[i + 1] ?? ''), `${h.name}: argument ${i + 1} (${kind}) has no size after it`);
      if (sizes.has(kind)) assert.ok(i > 0 && (sized.has(h.args[i - 1]!) || h.args[i - 1] === 'mem' || h.args[i - 1] === 'fixed_mem'), `${h.name}: size ${i + 1} follows no buffer`);
      if (kind === 'map_key' || kind === 'map_value' || kind === 'uninit_map_value') assert.equal(h.args[0], 'map', `${h.name}: ${kind} without a map`);
    });
    assert.ok(h.progTypes.length > 0, `${h.name} callable from nowhere`);
    assert.ok(Object.isFrozen(h), `${h.name} is mutable`);
  }
});

test('helperAllowed follows the program types', () => {
  assert.equal(helperAllowed(Helper.xdp_adjust_head, 'xdp'), true);
  assert.equal(helperAllowed(Helper.xdp_adjust_head, 'sched_cls'), false);
  assert.equal(helperAllowed(Helper.skb_store_bytes, 'sched_cls'), true);
  assert.equal(helperAllowed(Helper.skb_store_bytes, 'sched_act'), true);
  assert.equal(helperAllowed(Helper.skb_store_bytes, 'xdp'), false);
  assert.equal(helperAllowed(Helper.map_lookup_elem, 'xdp'), true);
  assert.equal(helperAllowed(Helper.redirect, 'sched_cls'), true);
  assert.equal(helperAllowed(4, 'xdp'), false, 'undescribed helpers are never allowed');
});
