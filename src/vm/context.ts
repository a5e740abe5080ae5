/**
 * The program contexts the VM models: struct xdp_md for XDP and struct __sk_buff for tc
 * (sched_cls) and socket filters, with the offsets of include/uapi/linux/bpf.h. Each field
 * says how a program may access it; data, data_end and data_meta are not stored but turn
 * into packet pointers when loaded.
 */
export type ProgramType = 'xdp' | 'sched_cls' | 'socket_filter';

export const PROGRAM_TYPES: readonly ProgramType[] = ['xdp', 'sched_cls', 'socket_filter'];

export const enum FieldKind {
  /** Stored scalar the program may read. */
  Read = 1,
  /** Stored scalar the program may read and write. */
  ReadWrite = 2,
  /** Loads as a pointer to the first packet byte. */
  Data = 3,
  /** Loads as a pointer just past the last packet byte. */
  DataEnd = 4,
  /** Loads as a pointer to the metadata before the packet (none in the VM: equals data). */
  DataMeta = 5,
  /** The packet's current length (skb->len). */
  Len = 6,
}

export interface CtxField {
  name: string;
  offset: number;
  size: 4 | 8;
  kind: FieldKind;
}

export interface CtxLayout {
  /** "xdp_md" or "__sk_buff". */
  struct: string;
  size: number;
  fields: readonly CtxField[];
  /** Field covering each byte offset, for access checks. */
  byOffset: readonly (CtxField | undefined)[];
}

function layout(struct: string, size: number, fields: CtxField[]): CtxLayout {
  const byOffset: (CtxField | undefined)[] = new Array(size).fill(undefined);
  for (const f of fields) for (let i = 0; i < f.size; i++) byOffset[f.offset + i] = f;
  return { struct, size, fields, byOffset };
}

const f = (name: string, offset: number, kind: FieldKind, size: 4 | 8 = 4): CtxField => ({ name, offset, size, kind });
const { Read: R, ReadWrite: RW } = { Read: FieldKind.Read, ReadWrite: FieldKind.ReadWrite };

const XDP_MD = layout('xdp_md', 24, [
  f('data', 0, FieldKind.Data), f('data_end', 4, FieldKind.DataEnd), f('data_meta', 8, FieldKind.DataMeta),
  f('ingress_ifindex', 12, R), f('rx_queue_index', 16, R), f('egress_ifindex', 20, R),
]);

const cb = (kind: FieldKind): CtxField[] => [0, 1, 2, 3, 4].map((i) => f(`cb[${i}]`, 48 + 4 * i, kind));

// tc programs (sched_cls): what filter.c's tc_cls_act_is_valid_access permits.
const SK_BUFF_TC = layout('__sk_buff', 192, [
  f('len', 0, FieldKind.Len), f('pkt_type', 4, R), f('mark', 8, RW), f('queue_mapping', 12, RW),
  f('protocol', 16, R), f('vlan_present', 20, R), f('vlan_tci', 24, R), f('vlan_proto', 28, R),
  f('priority', 32, RW), f('ingress_ifindex', 36, R), f('ifindex', 40, R), f('tc_index', 44, RW),
  ...cb(RW), f('hash', 68, R), f('tc_classid', 72, RW), f('data', 76, FieldKind.Data),
  f('data_end', 80, FieldKind.DataEnd), f('napi_id', 84, R), f('data_meta', 140, FieldKind.DataMeta),
  f('tstamp', 152, RW, 8), f('wire_len', 160, R), f('gso_segs', 164, R), f('gso_size', 176, R),
  f('hwtstamp', 184, R, 8),
]);

// Socket filters: read-only view without direct packet access; only cb[] is writable.
const SK_BUFF_SOCKET = layout('__sk_buff', 192, [
  f('len', 0, FieldKind.Len), f('pkt_type', 4, R), f('mark', 8, R), f('queue_mapping', 12, R),
  f('protocol', 16, R), f('vlan_present', 20, R), f('vlan_tci', 24, R), f('vlan_proto', 28, R),
  f('priority', 32, R), f('ingress_ifindex', 36, R), f('ifindex', 40, R), f('tc_index', 44, R),
  ...cb(RW), f('hash', 68, R), f('napi_id', 84, R), f('tstamp', 152, R, 8), f('gso_segs', 164, R),
  f('gso_size', 176, R), f('hwtstamp', 184, R, 8),
]);

export function contextLayout(type: ProgramType): CtxLayout {
  return type === 'xdp' ? XDP_MD : type === 'sched_cls' ? SK_BUFF_TC : SK_BUFF_SOCKET;
}

/**
 * Context field values a caller may set for a run, by field name (`mark`, `ifindex`,
 * `cb[0]`, `tstamp` ...). Unset fields take the values BPF_PROG_TEST_RUN gives on the
 * loopback device: see Machine.applyDefaultContext.
 */
export type ContextInit = Readonly<Record<string, number>>;
