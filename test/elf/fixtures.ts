/** C sources of the clang-built objects the tests load. */

/**
 * Every feature `netmangle load` supports in one object: BTF maps of each supported type (key and
 * value given as types and as sizes), `.rodata`, `.data` and `.bss` globals, a bpf-to-bpf call
 * into `.text`, and two programs (xdp and tc) sharing the callee.
 */
export const FEATURES_C = `
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

struct { __uint(type, BPF_MAP_TYPE_HASH); __type(key, __u32); __type(value, __u64); __uint(max_entries, 16); } counts SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_LRU_HASH); __type(key, __u32); __type(value, __u32); __uint(max_entries, 16); } recent SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); __type(key, __u32); __type(value, __u64); __uint(max_entries, 4); } bytes_seen SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH); __uint(key_size, 4); __uint(value_size, 8); __uint(max_entries, 8); } per_flow SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __type(key, __u32); __type(value, __u64); __uint(max_entries, 2); } last_len SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_RINGBUF); __uint(max_entries, 4096); } events SEC(".maps");

const volatile __u32 verdict = XDP_PASS;   /* .rodata */
__u32 bonus = 7;                           /* .data */
__u64 packets;                             /* .bss */

static __attribute__((noinline)) __u64 scaled(__u64 len)
{
	return len * 2 + bonus;
}

static __attribute__((noinline)) void account(__u64 len)
{
	__u32 k = 0;
	__u64 one = 1, *v = bpf_map_lookup_elem(&counts, &k);
	if (v)
		__sync_fetch_and_add(v, 1);
	else
		bpf_map_update_elem(&counts, &k, &one, BPF_ANY);
	__u64 *b = bpf_map_lookup_elem(&bytes_seen, &k);
	if (b)
		*b += len;
	__u32 r = 1;
	bpf_map_update_elem(&recent, &k, &r, BPF_ANY);
	bpf_map_update_elem(&per_flow, &k, &len, BPF_ANY);
	__u64 s = scaled(len);
	bpf_map_update_elem(&last_len, &k, &s, BPF_ANY);
	__u64 *e = bpf_ringbuf_reserve(&events, 8, 0);
	if (e) {
		*e = len;
		bpf_ringbuf_submit(e, 0);
	}
	packets++;
}

SEC("xdp")
int features_xdp(struct xdp_md *ctx)
{
	account(ctx->data_end - ctx->data);
	return verdict;
}

SEC("tc")
int features_tc(struct __sk_buff *skb)
{
	account(skb->len);
	return TC_ACT_OK;
}

char _license[] SEC("license") = "GPL";
`;

export const LEGACY_MAPS_C = `
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct legacy_def { unsigned int type, key_size, value_size, max_entries, map_flags; };
struct legacy_def old_map SEC("maps") = { BPF_MAP_TYPE_ARRAY, 4, 8, 1, 0 };
SEC("xdp") int legacy(struct xdp_md *ctx) { __u32 k = 0; return bpf_map_lookup_elem(&old_map, &k) ? XDP_PASS : XDP_DROP; }
char _license[] SEC("license") = "GPL";
`;

export const CORE_C = `
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct sk_buff_view { __u32 len; } __attribute__((preserve_access_index));
SEC("tc") int core(struct sk_buff_view *skb) { return skb->len > 100; }
char _license[] SEC("license") = "GPL";
`;

export const KFUNC_C = `
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
extern void bpf_rcu_read_lock(void) __ksym;
extern void bpf_rcu_read_unlock(void) __ksym;
SEC("xdp") int kf(struct xdp_md *ctx) { bpf_rcu_read_lock(); bpf_rcu_read_unlock(); return XDP_PASS; }
char _license[] SEC("license") = "GPL";
`;

export const PINNED_C = `
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __type(key, __u32); __type(value, __u64); __uint(max_entries, 1); __uint(pinning, LIBBPF_PIN_BY_NAME); } pinned_map SEC(".maps");
SEC("xdp") int pin(struct xdp_md *ctx) { __u32 k = 0; return bpf_map_lookup_elem(&pinned_map, &k) ? XDP_PASS : XDP_DROP; }
char _license[] SEC("license") = "GPL";
`;

export const UNKNOWN_MAP_C = `
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct { __uint(type, BPF_MAP_TYPE_STACK); __uint(value_size, 8); __uint(max_entries, 4); } a_stack SEC(".maps");
SEC("xdp") int st(struct xdp_md *ctx) { __u64 v = 1; bpf_map_push_elem(&a_stack, &v, 0); return XDP_PASS; }
char _license[] SEC("license") = "GPL";
`;

export const NO_LICENSE_C = `
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
SEC("xdp") int nolic(struct xdp_md *ctx) { return XDP_PASS; }
`;
