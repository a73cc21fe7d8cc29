"""VideoMAE's masked autoencoding (Tong et al., 2022) on our encoders: tube masking, the encoder on the
visible tokens only, a light decoder with mask tokens, and the mean squared error on the masked
tubelets' pixels, normalised per patch.

Tokens keep the encoder's order throughout: patch-major, time-minor (token p*T' + t). A mask is
(B, P*T') bool in that order, True where a tubelet is hidden. transformers' VideoMAEForPreTraining
orders its tokens time-major (t*P + p): `rearrange(mask, 'b (p t) -> b (t p)', t=T')` gives its mask.
"""
import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from transformer import Block

# Attention types whose blocks keep one output per patch token and take any set of whole tubes: with
# tube masking every token frame keeps the same patches, so divided and factorised attention group
# the visible tokens as they group all of them.
PRETRAINABLE_ATTENTION = ('joint_space_time', 'divided_space_time', 'fact_dot_product')
# transformers' and MCG-NJU's decoder: heads of 64 channels, MLP 4x wide, LayerNorm's default eps at the end.
DECODER_HEAD_DIM = 64
DECODER_NORM_EPS = 1e-5
# The per-patch normalisation of the targets: (x - mean) / (std + eps), the variance unbiased.
NORM_PIX_EPS = 1e-6


def pretraining_problem(config):
    """Why `config` (a VideoTransformerConfig) cannot be pretrained by masked autoencoding, or None."""
    if config.pos_emb_type == 'rope':
        return (f'-arch {config.arch} has rotary positions and its own objective (feature prediction); masked '
                f'autoencoding takes -arch videomae, or timesformer / vivit with -attention_type '
                f'{" / ".join(PRETRAINABLE_ATTENTION)}')
    if config.attention_type not in PRETRAINABLE_ATTENTION:
        return (f'-attention_type {config.attention_type} does not keep a token per tubelet through the blocks; '
                f'masked autoencoding takes {" / ".join(PRETRAINABLE_ATTENTION)} (-arch videomae, timesformer '
                f'or vivit)')
    return None


def tube_size_of(config):
    """Frames per token frame: the tubelet depth for Conv3d, one frame for Conv2d."""
    return config.tube_size if config.conv_type == 'Conv3d' else 1


def check_mask_ratio(mask_ratio, num_patches):
    """The ratio, or a ValueError unless it hides at least one patch and keeps at least one."""
    if not 0 < mask_ratio < 1 or not 0 < int(mask_ratio * num_patches) < num_patches:
        raise ValueError(f'mask_ratio must hide at least one of the {num_patches} patches of a frame and keep '
                         f'one (0 < ratio < 1), got {mask_ratio}')
    return mask_ratio


def tube_mask(batch, num_patches, time_steps, mask_ratio, generator=None):
    """VideoMAE's tube masking: int(mask_ratio * P) patches of each clip hidden in every token frame.

    -> bool (B, P*T'), True where masked, drawn on the CPU from `generator` (torch's global RNG when
    None, which seed_everything and the per-rank seeding of data_trainer set, and checkpoints restore).
    """
    num_masked = int(mask_ratio * num_patches)
    order = torch.rand(batch, num_patches, generator=generator).argsort(dim=1)
    spatial = torch.zeros(batch, num_patches, dtype=torch.bool).scatter_(1, order[:, :num_masked], True)
    return repeat(spatial, 'b p -> b (p t)', t=time_steps)


def token_indices(mask, masked):
    """Indices (B, M) of the masked (or visible) tokens of each row, ascending; every row has M."""
    chosen = mask if masked else ~mask
    return chosen.nonzero()[:, 1].view(mask.shape[0], -1)


def gather_tokens(tokens, indices):
    """tokens (B, N, D), indices (B, M) -> (B, M, D)."""
    return torch.gather(tokens, 1, indices[..., None].expand(-1, -1, tokens.shape[-1]))


def encode_visible(backbone, video, mask):
    """The encoder on the visible tubelets only: video (B, T, C, H, W), mask (B, P*T') -> (B, N_vis, D),
    the blocks' outputs at the visible tokens in token order (the class token, if any, left out).

    Positions are added to every token first and the visible ones gathered after, so each keeps its own.
    """
    backbone.check_input(video)
    patches = backbone.patch_embed(video)  # (B, T', P, D)
    batch, time_steps = patches.shape[:2]
    tokens = backbone.tokens(patches)
    has_cls = backbone.config.has_cls_token
    visible = gather_tokens(tokens[:, 1:] if has_cls else tokens, token_indices(mask.to(tokens.device), False))
    if has_cls:
        visible = torch.cat((tokens[:, :1], visible), dim=1)
    encoded = backbone.encode(visible, batch, time_steps)
    return encoded[:, 1:] if has_cls else encoded


def patchify(frames, patch_size, tube_size):
    """Frames (B, T, C, H, W) -> pixels per token (B, P*T', tube*p*p, C), tokens in our order; within a
    token, transformers' order (tubelet frame, row, column)."""
    return rearrange(frames, 'b (t u) c (h p) (w q) -> b (h w t) (u p q) c', u=tube_size, p=patch_size,
                     q=patch_size)


def unpatchify(pixels, patch_size, tube_size, time_steps, width):
    """patchify's inverse: (B, P*T', tube*p*p, C) -> (B, T, C, H, W); width in patches."""
    return rearrange(pixels, 'b (h w t) (u p q) c -> b (t u) c (h p) (w q)', t=time_steps, w=width, u=tube_size,
                     p=patch_size)


def patch_statistics(pixels):
    """Mean and standard deviation over each token's pixels, per channel: (B, N, K, C) -> 2 x (B, N, 1, C).
    The variance is unbiased, as VideoMAE's."""
    return pixels.mean(dim=-2, keepdim=True), pixels.var(dim=-2, unbiased=True, keepdim=True).sqrt()


def reconstruction_targets(video, mean, std, patch_size, tube_size, norm_pix_loss=True):
    """What the decoder predicts: normalised video (B, T, C, H, W) -> (B, P*T', tube*p*p*C).

    The video is first de-normalised with the data's `mean` and `std` (per channel) to [0, 1]; with
    norm_pix_loss each token's pixels are normalised per channel (VideoMAE's default).
    """
    shape = (1, 1, -1, 1, 1)
    frames = video.float() * torch.as_tensor(std, device=video.device).view(shape) \
        + torch.as_tensor(mean, device=video.device).view(shape)
    pixels = patchify(frames, patch_size, tube_size)
    if norm_pix_loss:
        centre, spread = patch_statistics(pixels)
        pixels = (pixels - centre) / (spread + NORM_PIX_EPS)
    return rearrange(pixels, 'b n k c -> b n (k c)')


class VideoMAEDecoder(nn.Module):
    """VideoMAE's pretraining decoder: the visible tokens' encoder outputs, projected to the decoder's
    width, and a learnt mask token at each masked tubelet, both plus VideoMAE's fixed table at that
    width; blocks, a norm and a linear layer predict each masked tubelet's pixels.

    (B, N_vis, encoder_dims) and the mask (B, N) -> (B, N_masked, tube*p*p*C), masked tokens in token order.
    """

    def __init__(self, encoder_dims, dims, depth, num_heads, pixels_per_token, norm_eps=1e-6, qkv_bias='qv',
                 activation='gelu', mlp_ratio=4.0):
        super().__init__()
        self.encoder_to_decoder = nn.Linear(encoder_dims, dims, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dims))
        self.blocks = nn.ModuleList(Block('joint_space_time', dims, num_heads, norm_eps, qkv_bias, activation,
                                          mlp_ratio, 0.0, 0.0) for _ in range(depth))
        self.norm = nn.LayerNorm(dims, eps=DECODER_NORM_EPS)
        self.head = nn.Linear(dims, pixels_per_token)
        self.init_weights()

    def init_weights(self):
        """Linear layers and the mask token truncated normal (std 0.02), biases zero, as the encoder."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for name, parameter in self.named_parameters():
            if name.endswith(('.q_bias', '.v_bias')):
                nn.init.zeros_(parameter)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, visible, mask, table):
        """visible (B, N_vis, D_enc), mask (B, N), table (1, N, dims) in token order -> (B, N_masked, pixels)."""
        batch = visible.shape[0]
        table = table.to(visible.dtype).expand(batch, -1, -1)
        visible_index, masked_index = token_indices(mask, False), token_indices(mask, True)
        tokens = torch.cat((self.encoder_to_decoder(visible) + gather_tokens(table, visible_index),
                            self.mask_token.to(visible.dtype) + gather_tokens(table, masked_index)), dim=1)
        for block in self.blocks:
            tokens = block(tokens)
        return self.head(self.norm(tokens[:, -masked_index.shape[1]:]))


def default_decoder_heads(dims):
    """VideoMAE's decoder heads: 64 channels each (at least one)."""
    return max(1, dims // DECODER_HEAD_DIM)


def build_decoder(config, dims, depth, num_heads=None):
    """The decoder for an encoder of `config` (a VideoTransformerConfig): its blocks take the encoder's
    norm eps, biases and activation; heads of 64 channels unless given."""
    pixels = tube_size_of(config) * config.patch_size ** 2 * config.in_channels
    return VideoMAEDecoder(config.embed_dims, dims, depth, num_heads or default_decoder_heads(dims), pixels,
                           config.norm_eps, config.qkv_bias, config.activation, config.mlp_ratio)


def masked_autoencoding(backbone, decoder, video, mask, mean, std, norm_pix_loss=True):
    """The pretraining loss: video (B, T, C, H, W) normalised with `mean` and `std`, mask (B, P*T') ->
    (loss, predictions (B, N_masked, pixels)), the mean squared error over the masked tubelets' pixels."""
    config = backbone.config
    mask = mask.to(video.device)
    time_steps = video.shape[1] // tube_size_of(config)
    num_patches = mask.shape[1] // time_steps
    table = backbone.tubelet_table(time_steps, num_patches, decoder.mask_token.shape[-1]).to(video.device)
    predictions = decoder(encode_visible(backbone, video, mask), mask, table)
    with torch.no_grad():
        targets = reconstruction_targets(video, mean, std, config.patch_size, tube_size_of(config), norm_pix_loss)
        targets = gather_tokens(targets, token_indices(mask, True))
    return F.mse_loss(predictions.float(), targets), predictions


def reconstruct(video, mask, predictions, mean, std, patch_size, tube_size, norm_pix_loss=True):
    """Pictures of a reconstruction, in [0, 1]: (frames, masked input, reconstruction), each (B, T, C, H, W).

    The masked input greys out the hidden tubelets; the reconstruction puts the predictions there,
    de-normalised with each hidden tubelet's own pixel statistics when the targets were normalised.
    """
    shape = (1, 1, -1, 1, 1)
    frames = (video.float() * torch.as_tensor(std, device=video.device).view(shape)
              + torch.as_tensor(mean, device=video.device).view(shape))
    time_steps, width = video.shape[1] // tube_size, video.shape[-1] // patch_size
    pixels = patchify(frames, patch_size, tube_size)  # (B, N, K, C)
    masked_index = token_indices(mask.to(video.device), True)
    index = masked_index[..., None, None].expand(-1, -1, *pixels.shape[2:])
    predicted = rearrange(predictions.float(), 'b m (k c) -> b m k c', c=pixels.shape[-1])
    if norm_pix_loss:
        centre, spread = patch_statistics(torch.gather(pixels, 1, index))
        predicted = predicted * (spread + NORM_PIX_EPS) + centre
    filled = pixels.scatter(1, index, predicted.clamp(0, 1))
    greyed = pixels.scatter(1, index, torch.full_like(predicted, 0.5))
    return tuple(unpatchify(part, patch_size, tube_size, time_steps, width).clamp(0, 1)
                 for part in (pixels, greyed, filled))
