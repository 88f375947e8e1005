# ms-swift LoRA SFT with seed 004's cadence (ms-swift #3314: eval every 50, save every 200)
CUDA_VISIBLE_DEVICES=0 \
swift sft \
    --model Qwen/Qwen2.5-7B-Instruct \
    --train_type lora \
    --dataset AI-ModelScope/alpaca-gpt4-data-en \
    --per_device_train_batch_size 1 \
    --gradient_accumulation_steps 16 \
    --target_modules all-linear \
    --eval_steps 50 \
    --save_steps 200 \
    --save_total_limit 2 \
    --logging_steps 5 \
    --output_dir output
