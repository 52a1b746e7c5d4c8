//! Reader for the files `torch.save` writes, enough to import state dicts; libtorch's C++ API
//! cannot read them, hence this module. Both formats are read:
//! - the zip format of PyTorch >= 1.6 ([`zip_format`]): `<name>/data.pkl` and one raw
//!   storage per entry under `<name>/data/`;
//! - the legacy format ([`legacy_format`]): PyTorch < 1.6, or
//!   `_use_new_zipfile_serialization=False`: pickles and the storages after them in one
//!   stream.
//!
//! The tar format of the first PyTorch releases is recognised only to say so.
//!
//! We run the small subset of the pickle machine that state dicts use ([`machine`]) and
//! build tensors from the storages; anything else in the pickle (optimiser state, numbers,
//! strings) is kept as plain values and ignored. Every file is treated as hostile:
//! - nothing in it is ever executed: the machine only builds values, and a pickle that asks
//!   for any Python global other than the few a state dict needs ([`globals`]) is refused
//!   with [`ReadError::Refused`] naming the global, before the reader goes on (a
//!   `torch.save(model)` of a whole module or a crafted `posix.system` gets no further);
//! - everything it asks for is bounded by [`TorchFileLimits`] (pickle length, values built,
//!   nesting, tensors, bytes of storages and tensors, zip entries) and checked, with
//!   overflow-checked arithmetic, before it is allocated; a storage must be exactly as long as
//!   its tensors' type and element count say;
//! - nothing recurses on the file's structure, so no nesting can overflow the stack.

mod collect;
mod error;
mod globals;
mod legacy_format;
mod limits;
mod machine;
mod storage;
mod value;
mod zip_format;

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::rc::Rc;

use tch::Tensor;

pub(crate) use error::ReadError;
use limits::Budget;
pub use limits::{Limit, LimitExceeded, TorchFileLimits};
use storage::{make_tensor, TensorRef};

/// Which kind of `torch.save` file a file is, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// A zip archive: `torch.save` of PyTorch >= 1.6, or a TorchScript module.
    Zip,
    /// The legacy format (PyTorch < 1.6, or `_use_new_zipfile_serialization=False`).
    Legacy,
    /// The tar format of the first PyTorch releases, which is not read.
    Tar,
}

/// What a file that is none of the [`Format`]s is told.
pub(crate) const NOT_A_TORCH_FILE: &str =
    "it is not a zip archive (torch.save since PyTorch 1.6, torch.jit.save) nor a legacy torch.save file";
/// What a file in the tar format is told.
pub(crate) const TAR_FORMAT: &str =
    "it is a torch.save file in the tar format of the first PyTorch releases, which is not read: load it with PyTorch and save it again";

/// Tells the formats apart by their first bytes: a zip's local header, the pickle of
/// PyTorch's magic number, or a tar header (`ustar` at byte 257). `Err` says what the file is
/// not.
pub(crate) fn sniff(path: &Path) -> Result<Format, ReadError> {
    let mut head = Vec::with_capacity(512);
    std::fs::File::open(path).and_then(|file| file.take(512).read_to_end(&mut head)).map_err(malformed_io)?;
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        Ok(Format::Zip)
    } else if legacy_format::starts_with_magic(&head) {
        Ok(Format::Legacy)
    } else if head.get(257..262) == Some(b"ustar") {
        Ok(Format::Tar)
    } else if head.first() == Some(&0x80) {
        Err("it is a pickle, but not a torch.save file (no PyTorch magic number)".into())
    } else {
        Err(NOT_A_TORCH_FILE.into())
    }
}

fn malformed_io(error: std::io::Error) -> ReadError {
    ReadError::Malformed(format!("cannot read: {error}"))
}

/// Reads every tensor reachable through dicts from the pickled object, keyed by its dotted
/// path (`model.conv1.weight` for `{'model': {'conv1.weight': ...}}`), within `limits`.
pub(crate) fn read_tensors(path: &Path, limits: &TorchFileLimits) -> Result<Vec<(String, Tensor)>, ReadError> {
    let file_len = std::fs::metadata(path).map_err(malformed_io)?.len();
    match sniff(path) {
        Ok(Format::Zip) => zip_format::read(path, file_len, limits),
        Ok(Format::Legacy) => legacy_format::read(path, file_len, limits),
        Ok(Format::Tar) => Err(TAR_FORMAT.into()),
        Err(ReadError::Malformed(reason)) => {
            Err(ReadError::Malformed(format!("not a PyTorch checkpoint (a torch.save file expected): {reason}")))
        }
        Err(other) => Err(other),
    }
}

/// The tensors `found` describes, made from the storages read, each charged to `budget`
/// before it is made.
fn assemble(
    found: &[(String, Rc<TensorRef>)],
    storages: &HashMap<&str, Tensor>,
    budget: &mut Budget,
) -> Result<Vec<(String, Tensor)>, ReadError> {
    let mut tensors = Vec::with_capacity(found.len());
    for (name, tensor) in found {
        budget.tensor(tensor.bytes)?;
        let key = &*tensor.storage.key;
        let storage = storages.get(key).ok_or_else(|| ReadError::Malformed(format!("storage {key} was not read")))?;
        tensors.push((name.clone(), make_tensor(storage, tensor, name)?));
    }
    Ok(tensors)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// A `torch.save`-shaped zip archive whose `data.pkl` is `pickle`.
    fn archive(pickle: &[u8]) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut zip = zip::ZipWriter::new(file.reopen().unwrap());
        zip.start_file("archive/data.pkl", zip::write::SimpleFileOptions::default()).unwrap();
        zip.write_all(pickle).unwrap();
        zip.start_file("archive/version", zip::write::SimpleFileOptions::default()).unwrap();
        zip.write_all(b"3\n").unwrap();
        zip.finish().unwrap();
        file
    }

    fn read(file: &tempfile::NamedTempFile) -> Result<Vec<(String, Tensor)>, ReadError> {
        read_tensors(file.path(), &TorchFileLimits::DEFAULT)
    }

    #[test]
    fn globals_outside_the_allow_list_are_refused_before_anything_is_built() {
        // pickle.dumps(os.system-calling object, protocol=2): GLOBAL, then the call.
        let protocol2 = b"\x80\x02cposix\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03.";
        // The same with protocol 4's STACK_GLOBAL.
        let protocol4 =
            b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00\x8c\x05posix\x94\x8c\x06system\x94\x93\x94\x8c\x04true\x94\x85\x94R\x94.";
        // A whole model: torch.nn classes.
        let module = b"\x80\x02ctorch.nn.modules.linear\nLinear\nq\x00)\x81q\x01.";
        for (pickle, global) in
            [(&protocol2[..], "posix.system"), (&protocol4[..], "posix.system"), (&module[..], "torch.nn.modules.linear.Linear")]
        {
            let file = archive(pickle);
            assert_eq!(read(&file).map(|_| ()), Err(ReadError::Refused(global.to_string())));
        }
    }

    #[test]
    fn plain_containers_of_numbers_and_strings_read_as_no_tensors() {
        // {'epoch': 3, 'name': 'x', 'lrs': [0.1, 0.01], 'flags': (True, None)}, protocol 2.
        let pickle = b"\x80\x02}q\x00(X\x05\x00\x00\x00epochq\x01K\x03X\x04\x00\x00\x00nameq\x02X\x01\x00\x00\x00xq\x03X\x03\x00\x00\x00lrsq\x04]q\x05(G?\xb9\x99\x99\x99\x99\x99\x9aG?\x84z\xe1G\xae\x14{eX\x05\x00\x00\x00flagsq\x06\x88N\x86q\x07u.";
        let file = archive(pickle);
        assert_eq!(read(&file).unwrap().len(), 0);
    }

    #[test]
    fn formats_are_told_apart_by_their_first_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        };
        assert_eq!(sniff(archive(b"N.").path()), Ok(Format::Zip));
        let legacy = write("legacy", b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.\x80\x02M\xe9\x03.");
        assert_eq!(sniff(&legacy), Ok(Format::Legacy));
        let mut tar = vec![0u8; 1024];
        tar[..7].copy_from_slice(b"sys_inf");
        tar[257..263].copy_from_slice(b"ustar\0");
        assert_eq!(sniff(&write("tar", &tar)), Ok(Format::Tar));
        assert!(read_tensors(&write("tar2", &tar), &TorchFileLimits::DEFAULT).is_err());
        // A plain pickle of an int, and text.
        assert!(sniff(&write("pickle", b"\x80\x02K\x01.")).is_err());
        assert!(sniff(&write("text", b"hello")).is_err());
    }
}
