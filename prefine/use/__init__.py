"""Using a trained model on new images: batch inference (`prefine predict`) and embeddings
(`prefine embed`) over folders, manifests, image files or prefine data splits.

Images go through the ingest decode (prefine.data.sources), so a model sees what it saw in
training; they stream in batches and the results stream to parquet, so memory stays flat
however many images there are. A model is a .safetensors file or a registry version
(`classifier@prod`, `encoder@v0.0.2`), fetched through DVC when the checkout holds another.
"""
