/**
 * The kernel's BPF helper functions (enum bpf_func_id in include/uapi/linux/bpf.h): every id's
 * name, and for the helpers that matter to packet programs and maps, what they return, what
 * each argument must be (what the verifier checks) and which program types may call them.
 *
 * Program types: `sched_cls` and `sched_act` are tc programs (they share one helper list in the
 * kernel), `xdp` is XDP. The lists are those of Linux 6.x (net/core/filter.c); a kernel test
 * checks them against the running kernel's verifier.
 */

/** Every helper name by id, 0 (`unspec`) to 211, as in the kernel's bpf_func_id (frozen since 6.2). */
const NAMES: readonly string[] = [
  'unspec', 'map_lookup_elem', 'map_update_elem', 'map_delete_elem', 'probe_read', 'ktime_get_ns',
  'trace_printk', 'get_prandom_u32', 'get_smp_processor_id', 'skb_store_bytes', 'l3_csum_replace',
  'l4_csum_replace', 'tail_call', 'clone_redirect', 'get_current_pid_tgid', 'get_current_uid_gid',
  'get_current_comm', 'get_cgroup_classid', 'skb_vlan_push', 'skb_vlan_pop', 'skb_get_tunnel_key',
  'skb_set_tunnel_key', 'perf_event_read', 'redirect', 'get_route_realm', 'perf_event_output',
  'skb_load_bytes', 'get_stackid', 'csum_diff', 'skb_get_tunnel_opt', 'skb_set_tunnel_opt',
  'skb_change_proto', 'skb_change_type', 'skb_under_cgroup', 'get_hash_recalc', 'get_current_task',
  'probe_write_user', 'current_task_under_cgroup', 'skb_change_tail', 'skb_pull_data',
  'csum_update', 'set_hash_invalid', 'get_numa_node_id', 'skb_change_head', 'xdp_adjust_head',
  'probe_read_str', 'get_socket_cookie', 'get_socket_uid', 'set_hash', 'setsockopt',
  'skb_adjust_room', 'redirect_map', 'sk_redirect_map', 'sock_map_update', 'xdp_adjust_meta',
  'perf_event_read_value', 'perf_prog_read_value', 'getsockopt', 'override_return',
  'sock_ops_cb_flags_set', 'msg_redirect_map', 'msg_apply_bytes', 'msg_cork_bytes',
  'msg_pull_data', 'bind', 'xdp_adjust_tail', 'skb_get_xfrm_state', 'get_stack',
  'skb_load_bytes_relative', 'fib_lookup', 'sock_hash_update', 'msg_redirect_hash',
  'sk_redirect_hash', 'lwt_push_encap', 'lwt_seg6_store_bytes', 'lwt_seg6_adjust_srh',
  'lwt_seg6_action', 'rc_repeat', 'rc_keydown', 'skb_cgroup_id', 'get_current_cgroup_id',
  'get_local_storage', 'sk_select_reuseport', 'skb_ancestor_cgroup_id', 'sk_lookup_tcp',
  'sk_lookup_udp', 'sk_release', 'map_push_elem', 'map_pop_elem', 'map_peek_elem', 'msg_push_data',
  'msg_pop_data', 'rc_pointer_rel', 'spin_lock', 'spin_unlock', 'sk_fullsock', 'tcp_sock',
  'skb_ecn_set_ce', 'get_listener_sock', 'skc_lookup_tcp', 'tcp_check_syncookie',
  'sysctl_get_name', 'sysctl_get_current_value', 'sysctl_get_new_value', 'sysctl_set_new_value',
  'strtol', 'strtoul', 'sk_storage_get', 'sk_storage_delete', 'send_signal', 'tcp_gen_syncookie',
  'skb_output', 'probe_read_user', 'probe_read_kernel', 'probe_read_user_str',
  'probe_read_kernel_str', 'tcp_send_ack', 'send_signal_thread', 'jiffies64',
  'read_branch_records', 'get_ns_current_pid_tgid', 'xdp_output', 'get_netns_cookie',
  'get_current_ancestor_cgroup_id', 'sk_assign', 'ktime_get_boot_ns', 'seq_printf', 'seq_write',
  'sk_cgroup_id', 'sk_ancestor_cgroup_id', 'ringbuf_output', 'ringbuf_reserve', 'ringbuf_submit',
  'ringbuf_discard', 'ringbuf_query', 'csum_level', 'skc_to_tcp6_sock', 'skc_to_tcp_sock',
  'skc_to_tcp_timewait_sock', 'skc_to_tcp_request_sock', 'skc_to_udp6_sock', 'get_task_stack',
  'load_hdr_opt', 'store_hdr_opt', 'reserve_hdr_opt', 'inode_storage_get', 'inode_storage_delete',
  'd_path', 'copy_from_user', 'snprintf_btf', 'seq_printf_btf', 'skb_cgroup_classid',
  'redirect_neigh', 'per_cpu_ptr', 'this_cpu_ptr', 'redirect_peer', 'task_storage_get',
  'task_storage_delete', 'get_current_task_btf', 'bprm_opts_set', 'ktime_get_coarse_ns',
  'ima_inode_hash', 'sock_from_file', 'check_mtu', 'for_each_map_elem', 'snprintf', 'sys_bpf',
  'btf_find_by_name_kind', 'sys_close', 'timer_init', 'timer_set_callback', 'timer_start',
  'timer_cancel', 'get_func_ip', 'get_attach_cookie', 'task_pt_regs', 'get_branch_snapshot',
  'trace_vprintk', 'skc_to_unix_sock', 'kallsyms_lookup_name', 'find_vma', 'loop', 'strncmp',
  'get_func_arg', 'get_func_ret', 'get_func_arg_cnt', 'get_retval', 'set_retval',
  'xdp_get_buff_len', 'xdp_load_bytes', 'xdp_store_bytes', 'copy_from_user_task', 'skb_set_tstamp',
  'ima_file_hash', 'kptr_xchg', 'map_lookup_percpu_elem', 'skc_to_mptcp_sock', 'dynptr_from_mem',
  'ringbuf_reserve_dynptr', 'ringbuf_submit_dynptr', 'ringbuf_discard_dynptr', 'dynptr_read',
  'dynptr_write', 'dynptr_data', 'tcp_raw_gen_syncookie_ipv4', 'tcp_raw_gen_syncookie_ipv6',
  'tcp_raw_check_syncookie_ipv4', 'tcp_raw_check_syncookie_ipv6', 'ktime_get_tai_ns',
  'user_ringbuf_drain', 'cgrp_storage_get', 'cgrp_storage_delete',
];

/** What the verifier requires of an argument register. */
export type ArgKind =
  /** The program's context (`struct xdp_md *`, `struct __sk_buff *`). */
  | 'ctx'
  /** A map, loaded with a 64-bit immediate map reference. */
  | 'map'
  /** Pointer to a key of the map in the previous argument (stack or map value). */
  | 'map_key'
  /** Pointer to a value of the map argument, read by the helper. */
  | 'map_value'
  /** Pointer to value-sized memory the helper fills in. */
  | 'uninit_map_value'
  /** Pointer to a map value, or NULL. */
  | 'map_value_or_null'
  /** Pointer to initialized memory the helper reads; its size is the next argument. */
  | 'mem'
  /** Like `mem`, or NULL (with a zero size). */
  | 'mem_or_null'
  /** Pointer to memory the helper writes; its size is the next argument. */
  | 'uninit_mem'
  /** Pointer to memory of a size the helper fixes (a `struct iphdr`, a `struct tcphdr`). */
  | 'fixed_mem'
  /** Pointer to a 4-byte integer the helper reads and writes. */
  | 'int_ptr'
  /** Pointer to an 8-byte integer the helper writes. */
  | 'long_ptr'
  /** A size known to the verifier, greater than zero. */
  | 'size'
  /** A size known to the verifier, possibly zero. */
  | 'size_or_zero'
  /** A size known to the verifier, the size of the memory the helper returns. */
  | 'alloc_size_or_zero'
  /** Memory returned by `ringbuf_reserve`. */
  | 'ringbuf_mem'
  /** Pointer to a `struct bpf_spin_lock` inside a map value. */
  | 'spin_lock'
  /** A socket reference (from `sk_lookup_*` or `__sk_buff.sk`). */
  | 'sock_common'
  /** A full socket (`struct bpf_sock *`). */
  | 'sock'
  /** A static subprogram used as callback. */
  | 'func'
  /** Pointer to stack memory passed to the callback, or NULL. */
  | 'stack_or_null'
  /** Pointer to a NUL-terminated string in a read-only map. */
  | 'const_str'
  /** Any scalar. */
  | 'anything';

/** What a helper leaves in r0. */
export type ReturnKind =
  | 'integer'
  | 'void'
  | 'map_value_or_null'
  /** Memory of the size given as `alloc_size_or_zero`, or NULL (must be checked). */
  | 'mem_or_null'
  | 'socket_or_null'
  | 'sock_common_or_null'
  | 'tcp_sock_or_null';

export type ProgType = 'xdp' | 'sched_cls' | 'sched_act';

export interface HelperSpec {
  readonly id: number;
  /** The kernel's name without the `bpf_` prefix. */
  readonly name: string;
  readonly ret: ReturnKind;
  /** Kinds of r1..r5, as many as the helper takes. */
  readonly args: readonly ArgKind[];
  readonly progTypes: readonly ProgType[];
  /** Only programs with a GPL-compatible license may call it. */
  readonly gplOnly: boolean;
}

const ALL: readonly ProgType[] = ['xdp', 'sched_cls', 'sched_act'];
const TC: readonly ProgType[] = ['sched_cls', 'sched_act'];
const XDP: readonly ProgType[] = ['xdp'];

function idOf(name: string): number {
  const id = NAMES.indexOf(name);
  if (id < 1) throw new Error(`no BPF helper named ${name}`);
  return id;
}

type Signature = Omit<HelperSpec, 'id' | 'name'>;

function s(ret: ReturnKind, args: readonly ArgKind[], progTypes: readonly ProgType[], gplOnly = false): Signature {
  return { ret, args: Object.freeze([...args]), progTypes, gplOnly };
}

const SIGNATURES = {
  // Maps, time, randomness, program control: every program type.
  map_lookup_elem: s('map_value_or_null', ['map', 'map_key'], ALL),
  map_update_elem: s('integer', ['map', 'map_key', 'map_value', 'anything'], ALL),
  map_delete_elem: s('integer', ['map', 'map_key'], ALL),
  ktime_get_ns: s('integer', [], ALL),
  trace_printk: s('integer', ['mem', 'size', 'anything', 'anything', 'anything'], ALL, true),
  get_prandom_u32: s('integer', [], ALL),
  get_smp_processor_id: s('integer', [], ALL),
  tail_call: s('void', ['ctx', 'map', 'anything'], ALL),
  get_numa_node_id: s('integer', [], ALL),
  map_push_elem: s('integer', ['map', 'map_value', 'anything'], ALL),
  map_pop_elem: s('integer', ['map', 'uninit_map_value'], ALL),
  map_peek_elem: s('integer', ['map', 'uninit_map_value'], ALL),
  spin_lock: s('void', ['spin_lock'], ALL),
  spin_unlock: s('void', ['spin_lock'], ALL),
  jiffies64: s('integer', [], ALL),
  ktime_get_boot_ns: s('integer', [], ALL),
  ringbuf_output: s('integer', ['map', 'mem', 'size_or_zero', 'anything'], ALL),
  ringbuf_reserve: s('mem_or_null', ['map', 'alloc_size_or_zero', 'anything'], ALL),
  ringbuf_submit: s('void', ['ringbuf_mem', 'anything'], ALL),
  ringbuf_discard: s('void', ['ringbuf_mem', 'anything'], ALL),
  ringbuf_query: s('integer', ['map', 'anything'], ALL),
  ktime_get_coarse_ns: s('integer', [], ALL),
  for_each_map_elem: s('integer', ['map', 'func', 'stack_or_null', 'anything'], ALL),
  snprintf: s('integer', ['mem_or_null', 'size_or_zero', 'const_str', 'mem_or_null', 'size_or_zero'], ALL, true),
  loop: s('integer', ['anything', 'func', 'stack_or_null', 'anything'], ALL),
  strncmp: s('integer', ['mem', 'size', 'const_str'], ALL),
  map_lookup_percpu_elem: s('map_value_or_null', ['map', 'map_key', 'anything'], ALL),
  ktime_get_tai_ns: s('integer', [], ALL),

  // Packet access and rewriting on an skb: tc.
  skb_store_bytes: s('integer', ['ctx', 'anything', 'mem', 'size', 'anything'], TC),
  l3_csum_replace: s('integer', ['ctx', 'anything', 'anything', 'anything', 'anything'], TC),
  l4_csum_replace: s('integer', ['ctx', 'anything', 'anything', 'anything', 'anything'], TC),
  clone_redirect: s('integer', ['ctx', 'anything', 'anything'], TC),
  // XDP may call it too, but there it takes no argument and reads the current task's classid.
  get_cgroup_classid: s('integer', ['ctx'], TC),
  skb_vlan_push: s('integer', ['ctx', 'anything', 'anything'], TC),
  skb_vlan_pop: s('integer', ['ctx'], TC),
  skb_get_tunnel_key: s('integer', ['ctx', 'uninit_mem', 'size', 'anything'], TC),
  skb_set_tunnel_key: s('integer', ['ctx', 'mem', 'size', 'anything'], TC),
  get_route_realm: s('integer', ['ctx'], TC),
  skb_load_bytes: s('integer', ['ctx', 'anything', 'uninit_mem', 'size'], TC),
  skb_get_tunnel_opt: s('integer', ['ctx', 'uninit_mem', 'size'], TC),
  skb_set_tunnel_opt: s('integer', ['ctx', 'mem', 'size'], TC),
  skb_change_proto: s('integer', ['ctx', 'anything', 'anything'], TC),
  skb_change_type: s('integer', ['ctx', 'anything'], TC),
  skb_under_cgroup: s('integer', ['ctx', 'map', 'anything'], TC),
  get_hash_recalc: s('integer', ['ctx'], TC),
  skb_change_tail: s('integer', ['ctx', 'anything', 'anything'], TC),
  skb_pull_data: s('integer', ['ctx', 'anything'], TC),
  csum_update: s('integer', ['ctx', 'anything'], TC),
  set_hash_invalid: s('void', ['ctx'], TC),
  skb_change_head: s('integer', ['ctx', 'anything', 'anything'], TC),
  get_socket_cookie: s('integer', ['ctx'], TC),
  get_socket_uid: s('integer', ['ctx'], TC),
  set_hash: s('integer', ['ctx', 'anything'], TC),
  skb_adjust_room: s('integer', ['ctx', 'anything', 'anything', 'anything'], TC),
  skb_get_xfrm_state: s('integer', ['ctx', 'anything', 'uninit_mem', 'size', 'anything'], TC),
  skb_load_bytes_relative: s('integer', ['ctx', 'anything', 'uninit_mem', 'size', 'anything'], TC),
  skb_cgroup_id: s('integer', ['ctx'], TC),
  skb_ancestor_cgroup_id: s('integer', ['ctx', 'anything'], TC),
  sk_fullsock: s('socket_or_null', ['sock_common'], TC),
  tcp_sock: s('tcp_sock_or_null', ['sock_common'], TC),
  skb_ecn_set_ce: s('integer', ['ctx'], TC),
  get_listener_sock: s('socket_or_null', ['sock_common'], TC),
  sk_storage_get: s('map_value_or_null', ['map', 'sock_common', 'map_value_or_null', 'anything'], TC),
  sk_storage_delete: s('integer', ['map', 'sock_common'], TC),
  sk_assign: s('integer', ['ctx', 'sock_common', 'anything'], TC),
  csum_level: s('integer', ['ctx', 'anything'], TC),
  skb_cgroup_classid: s('integer', ['ctx'], TC),
  redirect_neigh: s('integer', ['anything', 'mem_or_null', 'size_or_zero', 'anything'], TC),
  redirect_peer: s('integer', ['anything', 'anything'], TC),
  skb_set_tstamp: s('integer', ['ctx', 'anything', 'anything'], TC),

  // Both hooks.
  redirect: s('integer', ['anything', 'anything'], ALL),
  perf_event_output: s('integer', ['ctx', 'map', 'anything', 'mem', 'size_or_zero'], ALL, true),
  csum_diff: s('integer', ['mem_or_null', 'size_or_zero', 'mem_or_null', 'size_or_zero', 'anything'], ALL),
  fib_lookup: s('integer', ['ctx', 'mem', 'size', 'anything'], ALL, true),
  sk_lookup_tcp: s('socket_or_null', ['ctx', 'mem', 'size', 'anything', 'anything'], ALL),
  sk_lookup_udp: s('socket_or_null', ['ctx', 'mem', 'size', 'anything', 'anything'], ALL),
  sk_release: s('integer', ['sock_common'], ALL),
  skc_lookup_tcp: s('sock_common_or_null', ['ctx', 'mem', 'size', 'anything', 'anything'], ALL),
  tcp_check_syncookie: s('integer', ['sock_common', 'mem', 'size', 'mem', 'size'], ALL, true),
  tcp_gen_syncookie: s('integer', ['sock_common', 'mem', 'size', 'mem', 'size'], ALL, true),
  check_mtu: s('integer', ['ctx', 'anything', 'int_ptr', 'anything', 'anything'], ALL, true),
  tcp_raw_gen_syncookie_ipv4: s('integer', ['fixed_mem', 'mem', 'size_or_zero'], ALL, true),
  tcp_raw_gen_syncookie_ipv6: s('integer', ['fixed_mem', 'mem', 'size_or_zero'], ALL, true),
  tcp_raw_check_syncookie_ipv4: s('integer', ['fixed_mem', 'fixed_mem'], ALL, true),
  tcp_raw_check_syncookie_ipv6: s('integer', ['fixed_mem', 'fixed_mem'], ALL, true),

  // Packet access and rewriting on an xdp_buff: XDP.
  xdp_adjust_head: s('integer', ['ctx', 'anything'], XDP),
  redirect_map: s('integer', ['map', 'anything', 'anything'], XDP),
  xdp_adjust_meta: s('integer', ['ctx', 'anything'], XDP),
  xdp_adjust_tail: s('integer', ['ctx', 'anything'], XDP),
  xdp_get_buff_len: s('integer', ['ctx'], XDP),
  xdp_load_bytes: s('integer', ['ctx', 'anything', 'uninit_mem', 'size'], XDP),
  xdp_store_bytes: s('integer', ['ctx', 'anything', 'mem', 'size'], XDP),
};

/** Names of the helpers described in full. */
export type HelperName = keyof typeof SIGNATURES;

/** The helpers we describe in full, in id order. */
export const HELPERS: readonly HelperSpec[] = Object.freeze(
  Object.entries(SIGNATURES as Record<string, Signature>)
    .map(([name, sig]): HelperSpec => Object.freeze({ id: idOf(name), name, ...sig }))
    .sort((a, b) => a.id - b.id),
);

const byId = new Map<number, HelperSpec>(HELPERS.map((s) => [s.id, s]));
const byName = new Map<string, HelperSpec>(HELPERS.map((s) => [s.name, s]));

/** The full description of helper `id`, or undefined when it is not one we describe. */
export function helperById(id: number): HelperSpec | undefined {
  return byId.get(id);
}

/** The full description of a helper by its name, with or without the `bpf_` prefix. */
export function helperByName(name: string): HelperSpec | undefined {
  return byName.get(name.startsWith('bpf_') ? name.slice(4) : name);
}

/** The kernel's name (without `bpf_`) of any helper id the kernel defines, described or not. */
export function helperName(id: number): string | undefined {
  return Number.isInteger(id) && id >= 1 && id < NAMES.length ? NAMES[id] : undefined;
}

/** Number of helper ids the kernel defines (one more than the highest). */
export const HELPER_ID_COUNT = NAMES.length;

/** Whether a program of type `progType` may call helper `id` (false for helpers we do not describe). */
export function helperAllowed(id: number, progType: ProgType): boolean {
  return byId.get(id)?.progTypes.includes(progType) ?? false;
}

/**
 * Helper ids by name for code generation: `a.call(Helper.get_prandom_u32)`.
 * Only described helpers are here, so a typo or an unsupported helper fails to compile.
 */
export const Helper: Readonly<Record<HelperName, number>> = Object.freeze(
  Object.fromEntries(HELPERS.map((spec) => [spec.name, spec.id])) as Record<HelperName, number>,
);
