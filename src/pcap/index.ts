/** pcap and pcapng reading and writing as streams. */
export { CaptureError } from './capture-error.js';
export { CapturePacket, type PacketLike, type CaptureInterface, type CaptureFormat, type ByteOrder } from './packet.js';
export {
  openCapture, openCaptureSync, forEachPacket, readAllPackets, CaptureReader, CaptureReaderSync,
  type CaptureInfo, type OpenCaptureOptions,
} from './reader.js';
export {
  createPcapWriter, createPcapngWriter, PcapWriter, PcapngWriter,
  type CaptureWriter, type CaptureWriterOptions, type PcapWriterOptions, type PcapngWriterOptions, type WriteOptions,
} from './writer.js';
export {
  toEthernet, checkLinkType, linkTypeSupport, linkTypeName,
  LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LOOP, LINKTYPE_LINUX_SLL, LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_LINUX_SLL2,
} from './linktype.js';
export { summarizeCapture, formatCaptureSummary, formatCaptureTime, type CaptureSummary, type CaptureTime } from './summary.js';
export { DEFAULT_CHUNK_SIZE, MAX_RECORD_BYTES } from './parser.js';
