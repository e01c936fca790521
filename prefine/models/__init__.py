"""Networks: encoders and heads, pretraining objectives (autoencoders, contrastive, GAN), weights files."""
