//! Every `torch.save` file is treated as hostile (issue 26): crafted files that once exhausted
//! memory, overflowed the stack or allocated what a header claimed are refused with a clear,
//! typed error, quickly and within bounded memory; real files of both formats read as
//! `torch.load` reads them; and mutated files never make the reader panic.
//!
//! Files from PyTorch come from `tests/python/torch_files.py` (the project's environment).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rfb_core::checkpoint::{self, CheckpointError, Limit, LimitExceeded, TorchFileLimits};
use tch::Kind;

// ---------------------------------------------------------------------------------------------
// Pickle and archive builders (protocol 2, as torch.save writes).

fn text(s: &str) -> Vec<u8> {
    let mut out = vec![b'X'];
    out.extend((s.len() as u32).to_le_bytes());
    out.extend(s.as_bytes());
    out
}

/// An int of any size (LONG1 with 8 bytes).
fn int(v: i64) -> Vec<u8> {
    let mut out = vec![0x8a, 8];
    out.extend(v.to_le_bytes());
    out
}

fn tuple(values: &[i64]) -> Vec<u8> {
    let mut out = vec![b'('];
    for &v in values {
        out.extend(int(v));
    }
    out.push(b't');
    out
}

/// `_rebuild_tensor_v2(storage key of numel floats, offset, size, stride, False, OrderedDict())`.
fn tensor(key: &str, numel: i64, offset: i64, size: &[i64], stride: &[i64]) -> Vec<u8> {
    rebuild(key, numel, None, offset, size, stride)
}

/// [`tensor`] with the legacy format's persistent id: `view` is `None`, or a storage view
/// `(key, offset, size)` of the storage.
fn rebuild(key: &str, numel: i64, view: Option<Option<(&str, i64, i64)>>, offset: i64, size: &[i64], stride: &[i64]) -> Vec<u8> {
    let mut out = b"ctorch._utils\n_rebuild_tensor_v2\n((".to_vec();
    out.extend(text("storage"));
    out.extend(b"ctorch\nFloatStorage\n");
    out.extend(text(key));
    out.extend(text("cpu"));
    out.extend(int(numel));
    match view {
        None => {}
        Some(None) => out.push(b'N'),
        Some(Some((view_key, start, len))) => {
            out.extend(text(view_key));
            out.extend(int(start));
            out.extend(int(len));
            out.push(0x87);
        }
    }
    out.extend(b"tQ");
    out.extend(int(offset));
    out.extend(tuple(size));
    out.extend(tuple(stride));
    out.extend(b"\x89ccollections\nOrderedDict\n)RtR");
    out
}

/// `{'weight': tensor}`, pickled.
fn state_dict_of(tensor: Vec<u8>) -> Vec<u8> {
    let mut out = b"\x80\x02}".to_vec();
    out.extend(text("weight"));
    out.extend(tensor);
    out.extend(b"s.");
    out
}

#[derive(Clone, Copy)]
enum Packing {
    Stored,
    Deflated,
}

/// A zip archive of `(name, bytes, packing)` entries.
fn zip_archive(entries: &[(&str, &[u8], Packing)]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, bytes, packing) in entries {
        let method = match packing {
            Packing::Stored => zip::CompressionMethod::Stored,
            Packing::Deflated => zip::CompressionMethod::Deflated,
        };
        zip.start_file(*name, zip::write::SimpleFileOptions::default().compression_method(method)).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

/// A torch.save-shaped archive: `data.pkl` and float storages `data/KEY`.
fn torch_zip(pickle: &[u8], storages: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let names: Vec<String> = storages.iter().map(|(key, _)| format!("archive/data/{key}")).collect();
    let mut entries: Vec<(&str, &[u8], Packing)> = vec![("archive/data.pkl", pickle, Packing::Stored)];
    for ((_, bytes), name) in storages.iter().zip(&names) {
        entries.push((name, bytes, Packing::Stored));
    }
    entries.push(("archive/version", b"3\n", Packing::Stored));
    zip_archive(&entries)
}

fn floats(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Replaces every occurrence of `from` by `to` (same length) in `bytes`.
fn patch(bytes: &mut [u8], from: &[u8], to: &[u8]) -> usize {
    assert_eq!(from.len(), to.len());
    let mut count = 0;
    let mut at = 0;
    while let Some(found) = bytes[at..].windows(from.len()).position(|w| w == from) {
        bytes[at + found..at + found + to.len()].copy_from_slice(to);
        at += found + to.len();
        count += 1;
    }
    count
}

/// Sets the uncompressed size that the local and the central header of entry `name` declare.
fn declare_size(archive: &mut [u8], name: &str, size: u32) {
    let mut patched = 0;
    for (signature, name_len_at, size_at, name_at) in [(b"PK\x03\x04", 26, 22, 30), (b"PK\x01\x02", 28, 24, 46)] {
        let mut at = 0;
        while let Some(found) = archive[at..].windows(4).position(|w| w == signature) {
            let header = at + found;
            let name_len = u16::from_le_bytes([archive[header + name_len_at], archive[header + name_len_at + 1]]) as usize;
            if archive.get(header + name_at..header + name_at + name_len) == Some(name.as_bytes()) {
                archive[header + size_at..header + size_at + 4].copy_from_slice(&size.to_le_bytes());
                patched += 1;
            }
            at = header + 4;
        }
    }
    assert_eq!(patched, 2, "both headers of {name}");
}

// ---------------------------------------------------------------------------------------------
// Reading, timing and memory.

struct Files(tempfile::TempDir);

impl Files {
    fn new() -> Self {
        Files(tempfile::tempdir().unwrap())
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

/// Peak resident memory of this process so far, in bytes.
fn peak_rss() -> u64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    usage.ru_maxrss as u64 * 1024
}

/// The error reading `path` gives, checked to come within `seconds` and to raise the
/// process's peak memory by less than 200 MB.
fn refused(path: &Path, seconds: u64) -> CheckpointError {
    let peak_before = peak_rss();
    let started = Instant::now();
    let result = checkpoint::read_pytorch_tensors(path);
    let elapsed = started.elapsed();
    let grown = peak_rss().saturating_sub(peak_before);
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    eprintln!("{name}: {:.3} s, peak memory +{} MB: {:?}", elapsed.as_secs_f64(), grown >> 20, result.as_ref().err());
    assert!(elapsed < Duration::from_secs(seconds), "{name} took {elapsed:?}");
    assert!(grown < 200 << 20, "{name} raised the peak memory by {} MB", grown >> 20);
    let error = result.map(|t| t.len()).expect_err(&name);
    assert!(error.to_string().contains(&name), "the error names the file: {error}");
    error
}

fn over(error: &CheckpointError) -> Option<Limit> {
    match error {
        CheckpointError::OverLimit { limit: LimitExceeded { limit, .. }, .. } => Some(*limit),
        _ => None,
    }
}

fn bad_weights(error: &CheckpointError, phrase: &str) {
    assert!(matches!(error, CheckpointError::BadWeights { .. }), "{error}");
    assert!(error.to_string().contains(phrase), "{error:?} should say {phrase:?}");
}

// ---------------------------------------------------------------------------------------------
// Crafted files.

#[test]
fn a_memo_bomb_reads_in_linear_time_and_a_shared_dict_bomb_is_refused() {
    let files = Files::new();
    // x = None; 32 times: x = (x, x), each through the memo. With a deep copy per GET this
    // built 2^32 values; shared, it is 32 tuples.
    let mut pickle = b"\x80\x02}".to_vec();
    pickle.extend(text("x"));
    pickle.extend(b"Nq\x000");
    for _ in 0..32 {
        pickle.extend(b"h\x00h\x00\x86q\x000");
    }
    pickle.extend(b"h\x00s.");
    assert!(pickle.len() < 300);
    let path = files.write("memo_bomb.pt", &torch_zip(&pickle, &[]));
    let started = Instant::now();
    assert_eq!(checkpoint::read_pytorch_tensors(&path).unwrap().len(), 0, "no tensors in tuples");
    eprintln!("memo bomb of {} bytes: read in {:?}", pickle.len(), started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(2));

    // The same with dicts: naming the tensors walks 2^32 paths. Around a tensor, the tensor
    // limit refuses the names; around an empty dict, the walk's step limit.
    let dict_bomb = |leaf: &[u8]| {
        let mut pickle = b"\x80\x02".to_vec();
        pickle.extend(leaf);
        pickle.extend(b"q\x00");
        for _ in 0..32 {
            pickle.extend(b"}(");
            pickle.extend(text("a"));
            pickle.extend(b"h\x00");
            pickle.extend(text("b"));
            pickle.extend(b"h\x00uq\x00");
        }
        pickle.push(b'.');
        pickle
    };
    let mut leaf = b"}".to_vec();
    leaf.extend(text("t"));
    leaf.extend(tensor("0", 1, 0, &[1], &[1]));
    leaf.push(b's');
    let path = files.write("dict_bomb.pt", &torch_zip(&dict_bomb(&leaf), &[("0", floats(&[1.0]))]));
    // The names' total (the paths to every dict and tensor) runs out before the tensor count.
    let limit = over(&refused(&path, 5));
    assert!(matches!(limit, Some(Limit::Tensors | Limit::TotalNameBytes)), "{limit:?}");
    let path = files.write("empty_dict_bomb.pt", &torch_zip(&dict_bomb(b"}"), &[]));
    let limit = over(&refused(&path, 5));
    assert!(matches!(limit, Some(Limit::Values | Limit::TotalNameBytes)), "{limit:?}");

    // A 4000-byte key above 17 doublings: every one of the 131 072 names starts with it, each
    // under the name limit; together they would be 500 MB. The names' total budget refuses it.
    let mut pickle = b"\x80\x02".to_vec();
    pickle.extend(&leaf);
    pickle.extend(b"q\x00");
    for _ in 0..17 {
        pickle.extend(b"}(");
        pickle.extend(text("a"));
        pickle.extend(b"h\x00");
        pickle.extend(text("b"));
        pickle.extend(b"h\x00uq\x00");
    }
    pickle.push(b'}');
    pickle.extend(text(&"k".repeat(4000)));
    pickle.extend(b"h\x00s.");
    assert!(pickle.len() < 6000);
    let path = files.write("long_key_dict_bomb.pt", &torch_zip(&pickle, &[("0", floats(&[1.0]))]));
    assert_eq!(over(&refused(&path, 5)), Some(Limit::TotalNameBytes));
}

/// Reads `pickle` as a zip file's data.pkl within 5 s and 200 MB; its tensors' count.
fn read_quickly(files: &Files, name: &str, pickle: &[u8]) -> usize {
    let path = files.write(name, &torch_zip(pickle, &[]));
    let peak_before = peak_rss();
    let started = Instant::now();
    let result = checkpoint::read_pytorch_tensors(&path);
    let (elapsed, grown) = (started.elapsed(), peak_rss().saturating_sub(peak_before));
    eprintln!("{name} ({} bytes): {:.3} s, peak memory +{} MB", pickle.len(), elapsed.as_secs_f64(), grown >> 20);
    assert!(elapsed < Duration::from_secs(5), "{name} took {elapsed:?}");
    assert!(grown < 200 << 20, "{name} raised the peak memory by {} MB", grown >> 20);
    result.unwrap().len()
}

#[test]
fn one_huge_value_used_again_and_again_through_the_memo_costs_its_size_once() {
    let files = Files::new();
    let huge_tuple = |pickle: &mut Vec<u8>| {
        pickle.push(b'(');
        pickle.extend(std::iter::repeat_n(b'N', 400_000));
        pickle.extend(b"tq\x00");
    };
    // list(t) 100 000 times on one tuple of 400 000 items: a copy per call was 40 billion values.
    let mut pickle = b"\x80\x02".to_vec();
    huge_tuple(&mut pickle);
    pickle.extend(b"\x85q\x01cbuiltins\nlist\nq\x02");
    for _ in 0..100_000 {
        pickle.extend(b"h\x02h\x01R0");
    }
    pickle.extend(b"}.");
    assert_eq!(read_quickly(&files, "copied_huge_tuple.pt", &pickle), 0);
    // The huge tuple as the arguments of 100 000 calls.
    let mut pickle = b"\x80\x02".to_vec();
    huge_tuple(&mut pickle);
    pickle.extend(b"ccollections\nOrderedDict\nq\x02");
    for _ in 0..100_000 {
        pickle.extend(b"h\x02h\x00R0");
    }
    pickle.extend(b"}.");
    assert_eq!(read_quickly(&files, "huge_arguments.pt", &pickle), 0);
    // A 4 MB string as the key of 200 000 SETITEMs: hashed at every use, 800 GB of hashing.
    let mut pickle = b"\x80\x02".to_vec();
    pickle.extend(text(&"k".repeat(4 << 20)));
    pickle.extend(b"q\x00}q\x01");
    for _ in 0..200_000 {
        pickle.extend(b"h\x01h\x00Ns0");
    }
    pickle.extend(b"h\x01.");
    assert_eq!(read_quickly(&files, "long_key.pt", &pickle), 0);
    // The same key naming a dict that holds a tensor: the name is refused before it is made.
    let mut pickle = b"\x80\x02}q\x00".to_vec();
    pickle.extend(text("t"));
    pickle.extend(tensor("0", 1, 0, &[1], &[1]));
    pickle.extend(b"s}");
    pickle.extend(text(&"k".repeat(4 << 20)));
    pickle.extend(b"h\x00s.");
    let path = files.write("long_name.pt", &torch_zip(&pickle, &[("0", floats(&[1.0]))]));
    assert_eq!(over(&refused(&path, 5)), Some(Limit::NameBytes));
}

#[test]
fn deep_nesting_is_refused_as_a_plain_pickle_and_inside_a_small_deflated_zip() {
    let files = Files::new();
    // ((((...)))): a tuple around a tuple, 100 000 deep.
    let mut tuples = b"\x80\x02)".to_vec();
    tuples.extend(std::iter::repeat_n(0x85u8, 100_000));
    tuples.push(b'.');
    let path = files.write("deep_tuples.pt", &torch_zip(&tuples, &[]));
    assert_eq!(over(&refused(&path, 5)), Some(Limit::Depth));

    // [[[...]]] as Python's pickler writes it: 10 000 empty lists, then the appends.
    let mut lists = b"\x80\x02".to_vec();
    lists.extend(std::iter::repeat_n(b']', 10_000));
    lists.extend(std::iter::repeat_n(b'a', 9_999));
    lists.push(b'.');
    let path = files.write("deep_lists.pt", &torch_zip(&lists, &[]));
    assert_eq!(over(&refused(&path, 5)), Some(Limit::Depth));

    // 5 million levels deflate to a few kilobytes.
    let mut deep = b"\x80\x02)".to_vec();
    deep.extend(std::iter::repeat_n(0x85u8, 5_000_000));
    deep.push(b'.');
    let archive = zip_archive(&[("archive/data.pkl", &deep, Packing::Deflated), ("archive/version", b"3\n", Packing::Stored)]);
    assert!(archive.len() < 20_000, "{} bytes", archive.len());
    let path = files.write("deep_deflated.pt", &archive);
    assert_eq!(over(&refused(&path, 5)), Some(Limit::Depth));

    // Dicts filled after they were put in their parent escape the depth seen where items go
    // in; the walk that names tensors refuses them at its own depth limit.
    let chain = |open: &[u8], put_in: &[u8]| {
        let n = 100_000u32;
        let mut pickle = b"\x80\x02".to_vec();
        // Innermost first, so that the outermost container is the last one made.
        for k in (0..n).rev() {
            pickle.extend(open);
            pickle.push(b'r');
            pickle.extend(k.to_le_bytes());
        }
        for k in 0..n - 1 {
            pickle.push(b'j');
            pickle.extend(k.to_le_bytes());
            pickle.extend(put_in);
            pickle.extend((k + 1).to_le_bytes());
            pickle.extend(if put_in.len() > 1 { &b"s0"[..] } else { &b"a0"[..] });
        }
        pickle.extend(b"j\x00\x00\x00\x00.");
        pickle
    };
    let dicts = chain(b"}", &[b'X', 1, 0, 0, 0, b'k', b'j']);
    let path = files.write("late_deep_dicts.pt", &torch_zip(&dicts, &[]));
    assert_eq!(over(&refused(&path, 5)), Some(Limit::Depth));
    // Lists are not walked; the 100 000-deep chain is read, and dropped without recursion
    // (which would overflow the test thread's stack).
    let lists = chain(b"]", b"j");
    let path = files.write("late_deep_lists.pt", &torch_zip(&lists, &[]));
    assert_eq!(checkpoint::read_pytorch_tensors(&path).unwrap().len(), 0);
}

#[test]
fn tensors_larger_than_their_storage_or_the_limits_are_refused_before_allocating() {
    let files = Files::new();
    let one = || vec![("0", floats(&[1.0]))];
    // One element viewed as 10^6 x 10^6 (4 TB) through zero strides.
    let path = files.write("stride0_huge.pt", &torch_zip(&state_dict_of(tensor("0", 1, 0, &[1_000_000, 1_000_000], &[0, 0])), &one()));
    assert_eq!(over(&refused(&path, 5)), Some(Limit::TensorBytes));
    // 20 000 x 20 000 (1.6 GB): under the ceiling, over what a 1 KB file may ask for.
    let path = files.write("stride0_large.pt", &torch_zip(&state_dict_of(tensor("0", 1, 0, &[20_000, 20_000], &[0, 0])), &one()));
    assert_eq!(over(&refused(&path, 5)), Some(Limit::TensorBytes));
    // 2^40 x 2^40 elements: the element count overflows 64 bits.
    let path = files.write("numel_overflow.pt", &torch_zip(&state_dict_of(tensor("0", 1, 0, &[1 << 40, 1 << 40], &[0, 0])), &one()));
    assert_eq!(over(&refused(&path, 5)), Some(Limit::TensorBytes));
    // A storage of 2^62 floats: its byte count overflows.
    let path = files.write("storage_overflow.pt", &torch_zip(&state_dict_of(tensor("0", 1 << 62, 0, &[1], &[1])), &one()));
    assert_eq!(over(&refused(&path, 5)), Some(Limit::TensorBytes));
    // Negative strides and offsets, and a view past its storage's end.
    let two = || vec![("0", floats(&[1.0, 2.0]))];
    let path = files.write("negative_stride.pt", &torch_zip(&state_dict_of(tensor("0", 2, 1, &[2], &[-1])), &two()));
    bad_weights(&refused(&path, 5), "a tensor's stride is negative (-1)");
    let path = files.write("negative_offset.pt", &torch_zip(&state_dict_of(tensor("0", 2, -1, &[1], &[1])), &two()));
    bad_weights(&refused(&path, 5), "a tensor's storage offset is negative (-1)");
    let path = files.write("past_the_end.pt", &torch_zip(&state_dict_of(tensor("0", 2, 1, &[2], &[1])), &two()));
    bad_weights(&refused(&path, 5), "reaches past the end of storage 0");
    // A storage entry of another size than its element count says.
    let path = files.write("short_storage.pt", &torch_zip(&state_dict_of(tensor("0", 3, 0, &[3], &[1])), &two()));
    bad_weights(&refused(&path, 5), "archive/data/0 holds 8 bytes, but its storage needs exactly 12");
    // The same file with the sizes right reads.
    let path = files.write("right.pt", &torch_zip(&state_dict_of(tensor("0", 2, 1, &[1], &[1])), &two()));
    let tensors = checkpoint::read_pytorch_tensors(&path).unwrap();
    assert_eq!(tensors[0].0, "weight");
    assert_eq!(Vec::<f32>::try_from(&tensors[0].1).unwrap(), [2.0]);
}

#[test]
fn zip_entries_that_lie_about_their_size_are_refused_before_or_while_inflating() {
    let files = Files::new();
    let pickle = state_dict_of(tensor("0", 1, 0, &[1], &[1]));
    // data/0 inflates to 64 MiB of zeros but declares the 4 bytes its storage needs: reading
    // stops one byte past the declared size.
    let zeros = vec![0u8; 64 << 20];
    let mut archive = zip_archive(&[
        ("archive/data.pkl", &pickle, Packing::Stored),
        ("archive/data/0", &zeros, Packing::Deflated),
        ("archive/version", b"3\n", Packing::Stored),
    ]);
    assert!(archive.len() < 200_000);
    declare_size(&mut archive, "archive/data/0", 4);
    let path = files.write("lying_storage.pt", &archive);
    bad_weights(&refused(&path, 5), "archive/data/0 inflates to more than the 4 bytes its header declares");
    // data.pkl declaring 30 bytes and inflating to 64 MiB.
    let mut big_pickle = pickle.clone();
    big_pickle.extend(&zeros);
    let mut archive = zip_archive(&[("archive/data.pkl", &big_pickle, Packing::Deflated), ("archive/version", b"3\n", Packing::Stored)]);
    declare_size(&mut archive, "archive/data.pkl", 30);
    let path = files.write("lying_pickle.pt", &archive);
    bad_weights(&refused(&path, 5), "archive/data.pkl inflates to more than the 30 bytes");
    // A 1 GiB storage declared by a file of a few kilobytes: refused before inflating.
    let pickle = state_dict_of(tensor("0", 1 << 28, 0, &[1], &[1]));
    let mut archive = zip_archive(&[
        ("archive/data.pkl", &pickle, Packing::Stored),
        ("archive/data/0", &zeros[..1 << 20], Packing::Deflated),
        ("archive/version", b"3\n", Packing::Stored),
    ]);
    declare_size(&mut archive, "archive/data/0", 1 << 30);
    let path = files.write("huge_declared.pt", &archive);
    assert_eq!(over(&refused(&path, 5)), Some(Limit::TensorBytes));
}

#[test]
fn duplicate_entries_and_several_data_pkl_are_refused() {
    let files = Files::new();
    let pickle = state_dict_of(tensor("0", 1, 0, &[1], &[1]));
    // Two entries named archive/data/0 (the second written as data/1, then renamed): which
    // one a reader takes is up to the reader.
    let mut archive = torch_zip(&pickle, &[("0", floats(&[1.0])), ("1", floats(&[666.0]))]);
    assert_eq!(patch(&mut archive, b"archive/data/1", b"archive/data/0"), 2);
    let path = files.write("duplicate.pt", &archive);
    bad_weights(&refused(&path, 5), "two entries named \"archive/data/0\"");
    // Two data.pkl in two folders.
    let archive = zip_archive(&[
        ("a/data.pkl", &pickle, Packing::Stored),
        ("a/data/0", &floats(&[1.0]), Packing::Stored),
        ("b/data.pkl", &pickle, Packing::Stored),
        ("b/data/0", &floats(&[2.0]), Packing::Stored),
    ]);
    let path = files.write("two_pickles.pt", &archive);
    bad_weights(&refused(&path, 5), "2 data.pkl entries (a/data.pkl, b/data.pkl)");
}

// ---------------------------------------------------------------------------------------------
// Real files, compared with torch.load.

fn python_files(command: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    common::run_python_script("torch_files.py", &[command.to_string(), dir.path().display().to_string()]);
    dir
}

/// Our reading of `path` as torch_files.py describes torch.load's: name -> (dtype, shape, values).
fn described(path: &Path) -> serde_json::Value {
    let tensors = checkpoint::read_pytorch_tensors(path).unwrap();
    let mut out = serde_json::Map::new();
    for (name, tensor) in tensors {
        let dtype = match tensor.kind() {
            Kind::Float => "float32",
            Kind::Double => "float64",
            Kind::Half => "float16",
            Kind::BFloat16 => "bfloat16",
            Kind::Int64 => "int64",
            Kind::Int => "int32",
            Kind::Int16 => "int16",
            Kind::Int8 => "int8",
            Kind::Uint8 => "uint8",
            Kind::Bool => "bool",
            other => panic!("{name}: {other:?}"),
        };
        let values = Vec::<f64>::try_from(tensor.to_kind(Kind::Double).flatten(0, -1)).unwrap();
        out.insert(name, serde_json::json!({"dtype": dtype, "shape": tensor.size(), "values": values}));
    }
    serde_json::Value::Object(out)
}

fn expected(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap()
}

/// Compares as maps (JSON objects compare without order); names in the same order is checked
/// apart, since state dicts are ordered.
fn assert_same(ours: &serde_json::Value, theirs: &serde_json::Value, what: &str) {
    let keys = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(ours).len(), keys(theirs).len(), "{what}: {:?} vs {:?}", keys(ours), keys(theirs));
    assert_eq!(ours, theirs, "{what}");
}

#[test]
fn a_legacy_file_reads_as_torch_load_reads_it_and_as_its_zip_twin() {
    let dir = python_files("pair");
    let expected = expected(dir.path());
    let zip = described(&dir.path().join("zip.pt"));
    let legacy = described(&dir.path().join("legacy.pt"));
    assert_same(&zip, &expected["zip.pt"], "zip format against torch.load");
    assert_same(&legacy, &expected["legacy.pt"], "legacy format against torch.load");
    assert_same(&legacy, &zip, "legacy against zip");
    assert!(legacy["state_dict.transposed"]["shape"] == serde_json::json!([6, 4]));
    assert_eq!(legacy.as_object().unwrap().len(), 16, "{:?}", legacy.as_object().unwrap().keys());
    // The legacy format's own checks on PyTorch's file: cut short, or followed by a byte. Which
    // storage comes last is not fixed: torch names legacy storages by their memory address and
    // writes them in the order of those names, so 3 bytes cut off land in the data of a storage
    // of 3 bytes or more, or in the element count of the empty one. Both are refused, naming
    // where the file ends (each case on its own, with a fixed layout:
    // legacy_files_are_checked_storage_by_storage).
    let files = Files::new();
    let bytes = std::fs::read(dir.path().join("legacy.pt")).unwrap();
    let cut = refused(&files.write("cut.pt", &bytes[..bytes.len() - 3]), 5);
    assert!(matches!(cut, CheckpointError::BadWeights { .. }), "{cut}");
    let said = cut.to_string();
    assert!(said.contains("runs past the end of the file") || said.contains("the file ends before storage"), "{said}");
    let mut longer = bytes.clone();
    longer.push(0);
    bad_weights(&refused(&files.write("longer.pt", &longer), 5), "1 bytes follow the last storage");
}

#[test]
fn legacy_files_are_checked_storage_by_storage() {
    let files = Files::new();
    let read = |name: &str, pickle: Vec<u8>, keys: &[u8], count: i64| {
        let mut file = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.\x80\x02M\xe9\x03.\x80\x02}.".to_vec();
        file.extend(pickle);
        file.extend(keys);
        file.extend(count.to_le_bytes());
        file.extend(floats(&[1.0, 2.0, 3.0, 4.0]));
        files.write(name, &file)
    };
    let key_list = b"\x80\x02](X\x01\x00\x00\x000e.";
    let plain = || state_dict_of(rebuild("0", 4, Some(None), 1, &[2], &[2]));
    let tensors = checkpoint::read_pytorch_tensors(&read("right.pt", plain(), key_list, 4)).unwrap();
    assert_eq!(Vec::<f32>::try_from(&tensors[0].1).unwrap(), [2.0, 4.0]);
    // An early PyTorch storage view: elements 1 and 2 of storage 0, the tensor its second.
    let view = state_dict_of(rebuild("0", 4, Some(Some(("9", 1, 2))), 1, &[1], &[1]));
    let tensors = checkpoint::read_pytorch_tensors(&read("view.pt", view, key_list, 4)).unwrap();
    assert_eq!(Vec::<f32>::try_from(&tensors[0].1).unwrap(), [3.0]);
    let outside = state_dict_of(rebuild("0", 4, Some(Some(("9", 3, 2))), 0, &[1], &[1]));
    bad_weights(&refused(&read("view_outside.pt", outside, key_list, 4), 5), "lies outside storage 0");
    bad_weights(&refused(&read("count.pt", plain(), key_list, 5), 5), "storage 0 holds 5 elements in the file, but its tensors declare 4");
    bad_weights(&refused(&read("count_huge.pt", plain(), key_list, i64::MAX), 5), "holds 9223372036854775807 elements");
    let no_keys = b"\x80\x02].";
    bad_weights(&refused(&read("unlisted.pt", plain(), no_keys, 4), 5), "storage 0 is used but its data is not in the file");
    let other_key = b"\x80\x02](X\x01\x00\x00\x001e.";
    bad_weights(&refused(&read("unknown_key.pt", plain(), other_key, 4), 5), "names 1, which no tensor uses");
    let twice = b"\x80\x02](X\x01\x00\x00\x000X\x01\x00\x00\x000e.";
    bad_weights(&refused(&read("twice.pt", plain(), twice, 4), 5), "names 0 twice");
    let zip_ids = state_dict_of(tensor("0", 4, 0, &[1], &[1]));
    bad_weights(&refused(&read("zip_ids.pt", zip_ids, key_list, 4), 5), "unrecognised persistent id");
    // A storage as long as the limits allow but longer than the file: refused before reading.
    let long = state_dict_of(rebuild("0", 1 << 28, Some(None), 0, &[1], &[1]));
    bad_weights(&refused(&read("long.pt", long, key_list, 1 << 28), 5), "runs past the end of the file");
    // Cut inside a storage's element count: 4 of its 8 bytes left, no data.
    let whole = std::fs::read(read("whole.pt", plain(), key_list, 4)).unwrap();
    let cut = files.write("count_cut.pt", &whole[..whole.len() - 16 - 4]);
    bad_weights(&refused(&cut, 5), "the file ends before storage 0");
}

#[test]
fn a_dict_changed_through_the_memo_after_use_reads_as_torch_load_reads_it() {
    let dir = python_files("memo");
    let ours = described(&dir.path().join("memo.pt"));
    assert_same(&ours, &expected(dir.path()), "memo.pt against torch.load");
    let names: Vec<&String> = ours.as_object().unwrap().keys().collect();
    assert_eq!(names.len(), 6, "a, b and c are one dict of w and v: {names:?}");
    assert_eq!(ours["a.w"]["values"], serde_json::json!([5.0, 6.0]), "the replaced value");
}

// ---------------------------------------------------------------------------------------------
// Fuzzing: mutated real files and random pickles, a fixed number of times with a fixed seed.

const OPCODES: &[u8] =
    b"(.0123NIJKLMFGXTUBCQRbcdeghjlpqrstu})]a\x80\x81\x85\x86\x87\x88\x89\x8a\x8b\x8c\x8d\x8e\x8f\x90\x91\x92\x93\x94\x95\x96";

/// A random opcode stream with random, often small, arguments.
fn random_pickle(rng: &mut impl Rng) -> Vec<u8> {
    let mut out = vec![0x80, rng.gen_range(0..=5)];
    for _ in 0..rng.gen_range(1..200) {
        let op = if rng.gen_bool(0.97) { OPCODES[rng.gen_range(0..OPCODES.len())] } else { rng.gen() };
        out.push(op);
        match op {
            b'X' | b'T' | b'B' | b'J' => out.extend((rng.gen_range(0u32..6)).to_le_bytes()),
            0x8c | b'U' | b'C' | b'K' | b'q' | b'h' | 0x8a => out.push(rng.gen_range(0..6)),
            b'M' => out.extend(rng.gen::<u16>().to_le_bytes()),
            b'r' | b'j' | 0x8b => out.extend(rng.gen_range(0u32..8).to_le_bytes()),
            0x8d | 0x8e | 0x96 | 0x95 | b'G' => out.extend(rng.gen_range(0u64..6).to_le_bytes()),
            b'c' => out.extend(match rng.gen_range(0..4) {
                0 => &b"torch._utils\n_rebuild_tensor_v2\n"[..],
                1 => b"torch\nFloatStorage\n",
                2 => b"collections\nOrderedDict\n",
                _ => b"posix\nsystem\n",
            }),
            b'I' | b'L' | b'F' | b'g' | b'p' => out.extend(format!("{}\n", rng.gen_range(-3..300)).as_bytes()),
            _ => {}
        }
        if rng.gen_bool(0.05) {
            out.extend(text(["storage", "0", "cpu", "w"][rng.gen_range(0..4)]));
        }
    }
    out.push(b'.');
    out
}

/// One random change to `bytes`.
fn mutate(bytes: &mut Vec<u8>, rng: &mut impl Rng) {
    if bytes.is_empty() {
        bytes.push(rng.gen());
        return;
    }
    let at = rng.gen_range(0..bytes.len());
    match rng.gen_range(0..7) {
        0 => bytes[at] ^= 1 << rng.gen_range(0..8),
        1 => bytes[at] = [0, 1, 0x7f, 0x80, 0xff, b'(', b'.'][rng.gen_range(0..7)],
        2 => {
            let value: [u8; 8] = [u64::MAX, 1 << 31, 1 << 62, i64::MIN as u64, 0x7fff_ffff][rng.gen_range(0..5)].to_le_bytes();
            let n = rng.gen_range(1..=8).min(bytes.len() - at);
            bytes[at..at + n].copy_from_slice(&value[..n]);
        }
        3 => bytes.truncate(at),
        4 => {
            let end = rng.gen_range(at..=bytes.len().min(at + 64));
            bytes.drain(at..end);
        }
        5 => {
            let end = rng.gen_range(at..=bytes.len().min(at + 64));
            let chunk = bytes[at..end].to_vec();
            let to = rng.gen_range(0..=bytes.len());
            bytes.splice(to..to, chunk);
        }
        _ => bytes.insert(at, rng.gen()),
    }
}

/// The entries of a zip archive (to mutate one and zip them again: a mutation of the raw
/// archive mostly ends at its checksums).
fn entries_of(archive: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(archive)).unwrap();
    (0..zip.len())
        .map(|i| {
            let mut entry = zip.by_index(i).unwrap();
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
            (entry.name().to_string(), bytes)
        })
        .collect()
}

fn legacy_file(pickle: &[u8]) -> Vec<u8> {
    let mut out = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.\x80\x02M\xe9\x03.\x80\x02}.".to_vec();
    out.extend(pickle);
    out.extend(b"\x80\x02](X\x01\x00\x00\x000e.");
    out.extend(4i64.to_le_bytes());
    out.extend(floats(&[1.0, 2.0, 3.0, 4.0]));
    out
}

#[test]
fn mutated_files_and_random_pickles_never_panic_and_give_typed_errors() {
    let dir = python_files("pair");
    let zip_seed = std::fs::read(dir.path().join("zip.pt")).unwrap();
    let legacy_seed = std::fs::read(dir.path().join("legacy.pt")).unwrap();
    let zip_entries = entries_of(&zip_seed);
    let limits = TorchFileLimits {
        max_values: 100_000,
        max_tensor_bytes: 64 << 20,
        min_tensor_bytes: 16 << 20,
        max_pickle_bytes: 1 << 20,
        ..TorchFileLimits::DEFAULT
    };
    let files = Files::new();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(26);
    let started = Instant::now();
    let mut outcomes = std::collections::BTreeMap::<&str, usize>::new();
    const ROUNDS: usize = 10_000;
    for round in 0..ROUNDS {
        let bytes = match round % 4 {
            // The legacy file, mutated raw (it has no checksums).
            0 => {
                let mut bytes = legacy_seed.clone();
                for _ in 0..rng.gen_range(1..4) {
                    mutate(&mut bytes, &mut rng);
                }
                bytes
            }
            // One entry of the zip file mutated, or the raw archive.
            1 => {
                let mut entries = zip_entries.clone();
                let which = rng.gen_range(0..entries.len());
                for _ in 0..rng.gen_range(1..4) {
                    mutate(&mut entries[which].1, &mut rng);
                }
                let borrowed: Vec<(&str, &[u8], Packing)> =
                    entries.iter().map(|(n, b)| (n.as_str(), b.as_slice(), Packing::Stored)).collect();
                let mut archive = zip_archive(&borrowed);
                if rng.gen_bool(0.2) {
                    mutate(&mut archive, &mut rng);
                }
                archive
            }
            // Random pickles, as data.pkl and as a legacy file's object.
            2 => torch_zip(&random_pickle(&mut rng), &[("0", floats(&[1.0, 2.0, 3.0, 4.0]))]),
            _ => legacy_file(&random_pickle(&mut rng)),
        };
        let path = files.write(&format!("fuzz-{}.pt", round % 8), &bytes);
        let result = checkpoint::read_pytorch_tensors_with_limits(&path, &limits);
        let outcome = match &result {
            Ok(_) => "read",
            Err(CheckpointError::BadWeights { .. }) => "malformed",
            Err(CheckpointError::UnsafePickle { .. }) => "refused global",
            Err(CheckpointError::OverLimit { .. }) => "over a limit",
            Err(other) => panic!("round {round}: an error of no expected kind: {other:?}"),
        };
        *outcomes.entry(outcome).or_default() += 1;
    }
    let elapsed = started.elapsed();
    eprintln!("{ROUNDS} rounds in {:.1} s: {outcomes:?}; peak memory {} MB", elapsed.as_secs_f64(), peak_rss() >> 20);
    assert!(outcomes.len() >= 3, "the mutations reach several outcomes: {outcomes:?}");
    assert!(elapsed < Duration::from_secs(120), "{elapsed:?}");
}
