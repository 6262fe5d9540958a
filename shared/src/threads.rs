//! Work shared over the thread pool natively and run in turn in the browser, whose build has
//! no threads yet.

/// Runs `f` on every `size`-long piece of `data` with the piece's index.
pub(crate) fn for_each_chunk<T, F>(data: &mut [T], size: usize, f: F)
where
    T: Send,
    F: Fn((usize, &mut [T])) + Sync + Send,
{
    #[cfg(not(target_family = "wasm"))]
    {
        use rayon::prelude::*;
        data.par_chunks_mut(size).enumerate().for_each(f);
    }
    #[cfg(target_family = "wasm")]
    data.chunks_mut(size).enumerate().for_each(f);
}

/// Runs `f` on a thread of the pool natively (in turn in the browser). The parallel pieces
/// inside `f` are then handed to the other threads from a pool thread that works on them too,
/// instead of each being injected from outside while the caller sleeps: a decoding step of
/// the 135M model has 211 such products, and waking the pool for each cost a third of it.
pub(crate) fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    #[cfg(not(target_family = "wasm"))]
    return rayon::scope(|_| f());
    #[cfg(target_family = "wasm")]
    f()
}
