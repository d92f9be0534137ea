//! The write-ahead log that makes a batch durable with one small write and
//! one `fdatasync`.
//!
//! A durable redb commit rewrites about seven scattered pages (the changed
//! leaves, the table tree, the freed-page tree, the header) and does the
//! bookkeeping of its page allocator: measured, it cost a single client about
//! twice the floor of one write plus one fdatasync. So each batch is appended
//! here as one frame, written and fdatasynced before anyone hears of it (reads
//! are served from memory). From time to time ([`super::Writer`]'s
//! checkpoints) one durable redb transaction takes in everything logged so far
//! and the log starts again at offset 0.
//!
//! The file is allocated once at its full size and filled with zeros, so an
//! append overwrites blocks the file already owns: `fdatasync` then writes the
//! data only, with no journal commit for the file's size or extents.
//!
//! A frame: magic, payload length, CRC-32 (of everything after it), the
//! database's log epoch, the batch's sequence number, then the payload (the
//! batch's key/value operations). At open, frames are replayed in order from
//! offset 0 as long as each one checks, carries the database's epoch and the
//! next sequence number after the one the database last took in: a frame torn
//! by a crash (never acknowledged) or left over from before the last
//! checkpoint ends the replay. The epoch is drawn when a database is created,
//! so a log never replays into a database it was not written for (one moved
//! aside or emptied by `--recover`).

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// File name of the log inside the state directory.
pub const WAL_FILE: &str = "state.wal";
/// Size of the log file: frames fill it, then a checkpoint empties it.
pub const WAL_BYTES: u64 = 1 << 20;
const MAGIC: u32 = 0x5741_4e46; // "FNAW" little-endian
/// magic u32, payload length u32, crc u32, epoch u64, sequence u64.
const HEADER: usize = 28;

/// One key/value change of a batch, as redb is to apply it (values are
/// already sealed by [`super::seal`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// networks[id] = value
    PutNetwork { id: String, value: Vec<u8> },
    /// networks[id] removed
    DeleteNetwork { id: String },
    /// allocations[(network, address)] = value
    PutAllocation {
        network: String,
        address: u32,
        value: Vec<u8>,
    },
    /// allocations[(network, address)] removed
    DeleteAllocation { network: String, address: u32 },
    /// cursors[network] = value
    PutCursor { network: String, value: Vec<u8> },
    /// cursors[network] removed
    DeleteCursor { network: String },
    /// meta["revision"] = revision
    Revision(u64),
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Appends the payload encoding of `ops` to `out`.
pub fn encode(ops: &[Op], out: &mut Vec<u8>) {
    for op in ops {
        match op {
            Op::PutNetwork { id, value } => {
                out.push(1);
                put_bytes(out, id.as_bytes());
                put_bytes(out, value);
            }
            Op::DeleteNetwork { id } => {
                out.push(2);
                put_bytes(out, id.as_bytes());
            }
            Op::PutAllocation {
                network,
                address,
                value,
            } => {
                out.push(3);
                put_bytes(out, network.as_bytes());
                out.extend_from_slice(&address.to_le_bytes());
                put_bytes(out, value);
            }
            Op::DeleteAllocation { network, address } => {
                out.push(4);
                put_bytes(out, network.as_bytes());
                out.extend_from_slice(&address.to_le_bytes());
            }
            Op::PutCursor { network, value } => {
                out.push(5);
                put_bytes(out, network.as_bytes());
                put_bytes(out, value);
            }
            Op::DeleteCursor { network } => {
                out.push(6);
                put_bytes(out, network.as_bytes());
            }
            Op::Revision(revision) => {
                out.push(7);
                out.extend_from_slice(&revision.to_le_bytes());
            }
        }
    }
}

/// Reads the payload written by [`encode`]; `None` when it does not parse
/// (a frame whose checksum passed but whose payload does not: treated as the
/// end of the log).
pub fn decode(mut payload: &[u8]) -> Option<Vec<Op>> {
    fn take<'a>(input: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if input.len() < n {
            return None;
        }
        let (head, rest) = input.split_at(n);
        *input = rest;
        Some(head)
    }
    fn u32_of(input: &mut &[u8]) -> Option<u32> {
        Some(u32::from_le_bytes(take(input, 4)?.try_into().ok()?))
    }
    fn bytes(input: &mut &[u8]) -> Option<Vec<u8>> {
        let n = u32_of(input)? as usize;
        take(input, n).map(<[u8]>::to_vec)
    }
    fn text(input: &mut &[u8]) -> Option<String> {
        String::from_utf8(bytes(input)?).ok()
    }
    let mut ops = Vec::new();
    while let Some(tag) = take(&mut payload, 1) {
        let input = &mut payload;
        ops.push(match tag[0] {
            1 => Op::PutNetwork {
                id: text(input)?,
                value: bytes(input)?,
            },
            2 => Op::DeleteNetwork { id: text(input)? },
            3 => Op::PutAllocation {
                network: text(input)?,
                address: u32_of(input)?,
                value: bytes(input)?,
            },
            4 => Op::DeleteAllocation {
                network: text(input)?,
                address: u32_of(input)?,
            },
            5 => Op::PutCursor {
                network: text(input)?,
                value: bytes(input)?,
            },
            6 => Op::DeleteCursor {
                network: text(input)?,
            },
            7 => Op::Revision(u64::from_le_bytes(take(input, 8)?.try_into().ok()?)),
            _ => return None,
        });
    }
    Some(ops)
}

/// The open log: where the next frame goes.
pub struct Wal {
    file: File,
    offset: u64,
    /// Reused frame buffer (one allocation for the writer's life).
    frame: Vec<u8>,
}

impl Wal {
    /// Opens the log in `dir`, creating it (0600, zero-filled to
    /// [`WAL_BYTES`], synced with the directory) when missing or short.
    pub fn open(dir: &Path) -> io::Result<Wal> {
        let path = dir.join(WAL_FILE);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)?;
        let length = file.metadata()?.len();
        if length < WAL_BYTES {
            // Zeros written, not a hole or fallocate's unwritten extents: an
            // append must not change the file's block map.
            let zeros = vec![0u8; 64 * 1024];
            let mut at = length;
            while at < WAL_BYTES {
                let n = zeros.len().min((WAL_BYTES - at) as usize);
                file.write_all_at(&zeros[..n], at)?;
                at += n as u64;
            }
            file.sync_all()?;
            File::open(dir)?.sync_all()?;
        }
        Ok(Wal {
            file,
            offset: 0,
            frame: Vec::with_capacity(4096),
        })
    }

    /// The batches logged after `applied` for `epoch`, in order, from offset 0.
    pub fn replay(&self, epoch: u64, applied: u64) -> io::Result<Vec<(u64, Vec<Op>)>> {
        let mut content = vec![0u8; WAL_BYTES as usize];
        let mut read = 0;
        while read < content.len() {
            match self.file.read_at(&mut content[read..], read as u64)? {
                0 => break,
                n => read += n,
            }
        }
        content.truncate(read);
        let mut frames = Vec::new();
        let mut at = 0usize;
        let mut expected = applied.wrapping_add(1);
        while let Some(header) = content.get(at..at + HEADER) {
            let word = |i: usize| {
                let mut bytes = [0u8; 4];
                bytes.copy_from_slice(&header[i..i + 4]);
                u32::from_le_bytes(bytes)
            };
            let long = |i: usize| {
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(&header[i..i + 8]);
                u64::from_le_bytes(bytes)
            };
            let (magic, length, crc) = (word(0), word(4) as usize, word(8));
            if magic != MAGIC || long(12) != epoch || long(20) != expected {
                break;
            }
            let Some(body) = content.get(at + 12..at + HEADER + length) else {
                break;
            };
            if crc32fast::hash(body) != crc {
                tracing::warn!(
                    sequence = expected,
                    "state log: a frame fails its checksum (torn by a crash before it was \
                     acknowledged); the log ends there"
                );
                break;
            }
            let Some(ops) = decode(&body[HEADER - 12..]) else {
                break;
            };
            frames.push((expected, ops));
            expected = expected.wrapping_add(1);
            at += HEADER + length;
        }
        Ok(frames)
    }

    /// Whether a frame with `payload` bytes fits after the frames written since the last reset.
    pub fn fits(&self, payload: usize) -> bool {
        self.offset + (HEADER + payload) as u64 <= WAL_BYTES
    }

    /// Whether nothing was logged since the last reset.
    pub fn is_empty(&self) -> bool {
        self.offset == 0
    }

    /// Writes one frame and waits until it is on disk (`fdatasync`). The
    /// caller has checked [`Wal::fits`].
    pub fn append(&mut self, epoch: u64, sequence: u64, payload: &[u8]) -> io::Result<()> {
        let frame = &mut self.frame;
        frame.clear();
        frame.extend_from_slice(&MAGIC.to_le_bytes());
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&[0; 4]);
        frame.extend_from_slice(&epoch.to_le_bytes());
        frame.extend_from_slice(&sequence.to_le_bytes());
        frame.extend_from_slice(payload);
        let crc = crc32fast::hash(&frame[12..]);
        frame[8..12].copy_from_slice(&crc.to_le_bytes());
        self.file.write_all_at(frame, self.offset)?;
        self.file.sync_data()?;
        self.offset += frame.len() as u64;
        Ok(())
    }

    /// Starts again at offset 0, once a durable commit holds everything logged.
    pub fn reset(&mut self) {
        self.offset = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_round_trip() {
        let ops = vec![
            Op::PutNetwork {
                id: "n".into(),
                value: vec![1, 2, 3],
            },
            Op::DeleteNetwork { id: "gone".into() },
            Op::PutAllocation {
                network: "n".into(),
                address: 0x0a00_0001,
                value: b"{}".to_vec(),
            },
            Op::DeleteAllocation {
                network: "n".into(),
                address: 7,
            },
            Op::PutCursor {
                network: "n".into(),
                value: vec![9; 8],
            },
            Op::DeleteCursor {
                network: "n".into(),
            },
            Op::Revision(42),
        ];
        let mut payload = Vec::new();
        encode(&ops, &mut payload);
        assert_eq!(decode(&payload), Some(ops));
        assert_eq!(decode(&payload[..payload.len() - 1]), None, "truncated");
    }

    #[test]
    fn replay_takes_consecutive_frames_of_the_epoch_and_stops_at_a_torn_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path()).unwrap();
        let frame = |revision| {
            let mut payload = Vec::new();
            encode(&[Op::Revision(revision)], &mut payload);
            payload
        };
        for sequence in 5..=7 {
            wal.append(9, sequence, &frame(sequence)).unwrap();
        }
        let sequences = |frames: Vec<(u64, Vec<Op>)>| -> Vec<u64> {
            frames.into_iter().map(|(s, _)| s).collect()
        };
        assert_eq!(sequences(wal.replay(9, 4).unwrap()), vec![5, 6, 7]);
        // Another database's log, or frames the database already took in.
        assert!(wal.replay(8, 4).unwrap().is_empty());
        assert!(wal.replay(9, 5).unwrap().is_empty());
        // After a checkpoint, new frames overwrite the old from offset 0.
        wal.reset();
        wal.append(9, 8, &frame(8)).unwrap();
        assert_eq!(sequences(wal.replay(9, 7).unwrap()), vec![8]);
        // A torn frame (its last byte lost) ends the log.
        wal.append(9, 9, &frame(9)).unwrap();
        let end = wal.offset - 1;
        wal.file.write_all_at(&[0xff], end).unwrap();
        assert_eq!(sequences(wal.replay(9, 7).unwrap()), vec![8]);
        drop(wal);
        // Reopened: same content, nothing rewritten.
        let wal = Wal::open(dir.path()).unwrap();
        assert_eq!(sequences(wal.replay(9, 7).unwrap()), vec![8]);
    }
}
