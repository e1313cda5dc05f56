"""SpeechBrain ECAPA-TDNN (spkrec-ecapa-voxceleb) re-implemented to load its state dict."""
import math
import torch
import torch.nn as nn
import torch.nn.functional as F


class Conv1d(nn.Module):  # speechbrain.nnet.CNN.Conv1d: padding "same", reflect
    def __init__(self, cin, cout, k, d=1):
        super().__init__()
        self.k, self.d = k, d
        self.conv = nn.Conv1d(cin, cout, k, dilation=d)

    def forward(self, x):
        if self.k > 1:
            p = self.d * (self.k - 1) // 2
            x = F.pad(x, (p, p), mode="reflect")
        return self.conv(x)


class BN(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm = nn.BatchNorm1d(c)

    def forward(self, x):
        return self.norm(x)


class TDNNBlock(nn.Module):
    def __init__(self, cin, cout, k, d):
        super().__init__()
        self.conv = Conv1d(cin, cout, k, d)
        self.norm = BN(cout)

    def forward(self, x):
        return self.norm(F.relu(self.conv(x)))


class Res2NetBlock(nn.Module):
    def __init__(self, c, scale, k, d):
        super().__init__()
        self.scale = scale
        self.blocks = nn.ModuleList([TDNNBlock(c // scale, c // scale, k, d) for _ in range(scale - 1)])

    def forward(self, x):
        ys = []
        for i, xi in enumerate(torch.chunk(x, self.scale, dim=1)):
            if i == 0:
                yi = xi
            elif i == 1:
                yi = self.blocks[i - 1](xi)
            else:
                yi = self.blocks[i - 1](xi + yi)
            ys.append(yi)
        return torch.cat(ys, dim=1)


class SEBlock(nn.Module):
    def __init__(self, c, se):
        super().__init__()
        self.conv1 = Conv1d(c, se, 1)
        self.conv2 = Conv1d(se, c, 1)

    def forward(self, x):
        s = x.mean(dim=2, keepdim=True)
        s = torch.sigmoid(self.conv2(F.relu(self.conv1(s))))
        return s * x


class SERes2NetBlock(nn.Module):
    def __init__(self, c, k, d, scale=8, se=128):
        super().__init__()
        self.tdnn1 = TDNNBlock(c, c, 1, 1)
        self.res2net_block = Res2NetBlock(c, scale, k, d)
        self.tdnn2 = TDNNBlock(c, c, 1, 1)
        self.se_block = SEBlock(c, se)

    def forward(self, x):
        return self.se_block(self.tdnn2(self.res2net_block(self.tdnn1(x)))) + x


def _stats(x, m, eps=1e-12):
    mean = (m * x).sum(dim=2)
    std = torch.sqrt((m * (x - mean.unsqueeze(2)).pow(2)).sum(dim=2).clamp(eps))
    return mean, std


class ASP(nn.Module):
    def __init__(self, c, att=128):
        super().__init__()
        self.tdnn = TDNNBlock(c * 3, att, 1, 1)
        self.conv = Conv1d(att, c, 1)

    def forward(self, x):
        L = x.shape[-1]
        m = torch.ones(x.shape[0], 1, L, dtype=x.dtype) / L
        mean, std = _stats(x, m)
        attn = torch.cat([x, mean.unsqueeze(2).repeat(1, 1, L), std.unsqueeze(2).repeat(1, 1, L)], dim=1)
        attn = self.conv(torch.tanh(self.tdnn(attn)))
        attn = F.softmax(attn, dim=2)
        mean, std = _stats(x, attn)
        return torch.cat((mean, std), dim=1).unsqueeze(2)


class ECAPA(nn.Module):
    def __init__(self, n_mels=80, ch=(1024, 1024, 1024, 1024, 3072), ks=(5, 3, 3, 3, 1), ds=(1, 2, 3, 4, 1), lin=192):
        super().__init__()
        self.blocks = nn.ModuleList([TDNNBlock(n_mels, ch[0], ks[0], ds[0])] +
                                    [SERes2NetBlock(ch[i], ks[i], ds[i]) for i in range(1, 4)])
        self.mfa = TDNNBlock(ch[1] * 3, ch[4], ks[4], ds[4])
        self.asp = ASP(ch[4])
        self.asp_bn = BN(ch[4] * 2)
        self.fc = Conv1d(ch[4] * 2, lin, 1)

    def forward(self, feats):  # (batch, frames, 80)
        x = feats.transpose(1, 2)
        xl = []
        for layer in self.blocks:
            x = layer(x)
            xl.append(x)
        x = torch.cat(xl[1:], dim=1)
        x = self.mfa(x)
        x = self.asp(x)
        x = self.asp_bn(x)
        x = self.fc(x)
        return x.squeeze(2)


def _mel_fb(n_mels=80, n_fft=400, sr=16000, fmin=0.0, fmax=8000.0):
    # speechbrain Filterbank: HTK mel, triangular, on linspace freqs
    def hz2mel(f): return 2595 * math.log10(1 + f / 700.0)
    mel = torch.linspace(hz2mel(fmin), hz2mel(fmax), n_mels + 2)
    hz = 700 * (10 ** (mel / 2595) - 1)
    band = hz[1:] - hz[:-1]
    f_central = hz[1:-1]
    band = band[:-1]
    all_freqs = torch.linspace(0, sr // 2, n_fft // 2 + 1)
    slope = (all_freqs.unsqueeze(0) - f_central.unsqueeze(1)) / band.unsqueeze(1)
    left = slope + 1.0
    right = -slope + 1.0
    fb = torch.max(torch.zeros(1), torch.min(left, right))
    return fb  # (n_mels, freqs)


_FB = None


def fbank(wav):  # (samples,) float -> (frames, 80), speechbrain Fbank defaults
    global _FB
    if _FB is None:
        _FB = _mel_fb()
    spec = torch.stft(wav, n_fft=400, hop_length=160, win_length=400, window=torch.hamming_window(400),
                      center=True, pad_mode="constant", return_complex=True)
    p = spec.abs().pow(2).T  # (frames, freqs)
    m = p @ _FB.T
    db = 10 * torch.log10(m.clamp(min=1e-10))
    db = torch.max(db, db.max() - 80.0)
    return db


def load(path):
    net = ECAPA()
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))  # strict
    return net.eval()
