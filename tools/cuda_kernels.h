/* SPDX-License-Identifier: MIT */
/*
 * The GPU kernels of `uhmm bench --cuda` and of the CUDA tests, as PTX the
 * driver compiles at load time (uhmm_cuda_function): no CUDA toolkit is
 * needed to build uhmm.  Checked with `ptxas -arch=sm_90` on the H100
 * machine (docs/PERFORMANCE.md); the simulated driver (tests/cuda/fakecuda.c)
 * runs both by name.
 */
#ifndef UHMM_CUDA_KERNELS_H
#define UHMM_CUDA_KERNELS_H

/*
 * fill(u32 *p, u32 v, u64 n): p[i] = v.
 * saxpy(f32 *x, f32 *y, f32 a, u64 n): y[i] = a * x[i] + y[i].
 * One thread per element, 64-bit indices (8 GiB needs them).
 */
static const char uhmm_kernels_ptx[] =
	".version 6.0\n"
	".target sm_50\n"
	".address_size 64\n"
	"\n"
	".visible .entry uhmm_fill(\n"
	"\t.param .u64 p_ptr,\n"
	"\t.param .u32 p_val,\n"
	"\t.param .u64 p_n\n"
	")\n"
	"{\n"
	"\t.reg .pred %p<2>;\n"
	"\t.reg .b32 %r<5>;\n"
	"\t.reg .b64 %rd<8>;\n"
	"\tld.param.u64 %rd1, [p_ptr];\n"
	"\tld.param.u32 %r1, [p_val];\n"
	"\tld.param.u64 %rd2, [p_n];\n"
	"\tcvta.to.global.u64 %rd3, %rd1;\n"
	"\tmov.u32 %r2, %ctaid.x;\n"
	"\tmov.u32 %r3, %ntid.x;\n"
	"\tmov.u32 %r4, %tid.x;\n"
	"\tcvt.u64.u32 %rd4, %r4;\n"
	"\tmad.wide.u32 %rd5, %r2, %r3, %rd4;\n"
	"\tsetp.ge.u64 %p1, %rd5, %rd2;\n"
	"\t@%p1 bra $L_fill_done;\n"
	"\tshl.b64 %rd6, %rd5, 2;\n"
	"\tadd.s64 %rd7, %rd3, %rd6;\n"
	"\tst.global.u32 [%rd7], %r1;\n"
	"$L_fill_done:\n"
	"\tret;\n"
	"}\n"
	"\n"
	".visible .entry uhmm_saxpy(\n"
	"\t.param .u64 p_x,\n"
	"\t.param .u64 p_y,\n"
	"\t.param .f32 p_a,\n"
	"\t.param .u64 p_n\n"
	")\n"
	"{\n"
	"\t.reg .pred %p<2>;\n"
	"\t.reg .b32 %r<4>;\n"
	"\t.reg .f32 %f<5>;\n"
	"\t.reg .b64 %rd<12>;\n"
	"\tld.param.u64 %rd1, [p_x];\n"
	"\tld.param.u64 %rd2, [p_y];\n"
	"\tld.param.f32 %f1, [p_a];\n"
	"\tld.param.u64 %rd3, [p_n];\n"
	"\tcvta.to.global.u64 %rd4, %rd1;\n"
	"\tcvta.to.global.u64 %rd5, %rd2;\n"
	"\tmov.u32 %r1, %ctaid.x;\n"
	"\tmov.u32 %r2, %ntid.x;\n"
	"\tmov.u32 %r3, %tid.x;\n"
	"\tcvt.u64.u32 %rd6, %r3;\n"
	"\tmad.wide.u32 %rd7, %r1, %r2, %rd6;\n"
	"\tsetp.ge.u64 %p1, %rd7, %rd3;\n"
	"\t@%p1 bra $L_saxpy_done;\n"
	"\tshl.b64 %rd8, %rd7, 2;\n"
	"\tadd.s64 %rd9, %rd4, %rd8;\n"
	"\tadd.s64 %rd10, %rd5, %rd8;\n"
	"\tld.global.f32 %f2, [%rd9];\n"
	"\tld.global.f32 %f3, [%rd10];\n"
	"\tfma.rn.f32 %f4, %f1, %f2, %f3;\n"
	"\tst.global.f32 [%rd10], %f4;\n"
	"$L_saxpy_done:\n"
	"\tret;\n"
	"}\n";

#endif
